"""Batch buffers (issue 14): reused only once nobody holds the last batch made in them."""

from __future__ import annotations

import torch

from chute.loader.buffers import batch_buffer


def test_a_buffer_is_reused_only_when_no_tensor_or_view_of_it_is_alive() -> None:
    first = batch_buffer((2, 3, 4), torch.float32)
    first.fill_(1.0)
    second = batch_buffer((2, 3, 4), torch.float32)
    assert second.data_ptr() != first.data_ptr()  # the first batch is still held
    address, view = first.data_ptr(), first[1:].permute(0, 2, 1)
    del first
    third = batch_buffer((2, 3, 4), torch.float32)
    assert third.data_ptr() != address  # a view of it is still held
    del view, third
    assert batch_buffer((2, 3, 4), torch.float32).data_ptr() == address  # nobody holds it: reused


def test_buffers_are_per_shape_and_dtype() -> None:
    a = batch_buffer((4, 4), torch.uint8)
    b = batch_buffer((4, 4), torch.float32)
    assert (a.dtype, b.dtype) == (torch.uint8, torch.float32)
    assert a.shape == b.shape == (4, 4)
    assert a.is_contiguous()
    assert b.is_contiguous()


def _in_worker(_: int) -> bool:
    return batch_buffer((8, 8), torch.float32).is_shared()


def test_in_a_worker_process_the_buffer_is_shared_memory() -> None:
    loader = torch.utils.data.DataLoader(range(2), batch_size=None, num_workers=1, collate_fn=_in_worker)
    assert list(loader) == [True, True]
