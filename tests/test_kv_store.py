"""The tiered KV block store: tiers, LRU movement, keys, and a disk tier that survives killed runs and damaged files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cachebench.reuse.store import KVBlock, TieredKVStore, chain_key, content_key

NS = "test-model.bf16"
SHAPE = (2, 2, 4, 8)  # layers, kv_heads, tokens, head_dim
TOKENS = (11, 12, 13, 14)


def make_block(seed: int, dtype: torch.dtype = torch.float32, tokens: tuple[int, ...] = TOKENS) -> KVBlock:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(SHAPE, generator=generator).to(dtype)
    values = torch.randn(SHAPE, generator=generator).to(dtype)
    return KVBlock(keys, values, tokens, {"seed": str(seed)})


def block_bytes(dtype: torch.dtype = torch.float32) -> int:
    return 2 * torch.Size(SHAPE).numel() * dtype.itemsize


def make_store(tmp_path=None, *, device=10, cpu=10, disk=0, dtype=torch.float32, **kwargs) -> TieredKVStore:
    """Capacities in blocks (of SHAPE in `dtype`) so the tests read in blocks, not bytes."""
    size = block_bytes(dtype)
    disk_bytes = disk * (size + 1024)  # a file is the tensors plus the token ids and a header
    return TieredKVStore(NS, torch.device("cpu"), dtype, device * size, cpu * size, tmp_path, disk_bytes, **kwargs)


def assert_same(got: KVBlock, want: KVBlock, dtype: torch.dtype) -> None:
    assert got.keys.dtype == dtype and got.values.dtype == dtype
    assert torch.equal(got.keys, want.keys.to(dtype)) and torch.equal(got.values, want.values.to(dtype))
    assert got.tokens == want.tokens and got.meta == want.meta


def reopen(tmp_path, **kwargs) -> TieredKVStore:
    """A new store over the same folder, as a later run would make."""
    return make_store(tmp_path, device=0, cpu=0, disk=10, **kwargs)


# ------------------------------------------------------------------------------------------------- tiers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("capacities", "tier"), [((10, 10, 0), "device"), ((0, 10, 0), "cpu"), ((0, 0, 10), "disk")])
def test_round_trip_through_each_tier(tmp_path, dtype, capacities, tier):
    device, cpu, disk = capacities
    store = make_store(tmp_path, device=device, cpu=cpu, disk=disk, dtype=dtype)
    block = make_block(1, dtype)
    assert store.put("k1", block) == tier
    got, found_in = store.get("k1")
    assert found_in == tier
    assert_same(got, block, dtype)
    assert store.stats.hits[tier] == 1


def test_put_keeps_its_own_copy_and_converts_dtype():
    store = make_store(dtype=torch.bfloat16)
    block = make_block(1, torch.float32)
    store.put("k1", block)
    original = block.keys.clone()
    block.keys.zero_()
    got, _ = store.get("k1")
    assert got.keys.dtype == torch.bfloat16
    assert torch.equal(got.keys, original.to(torch.bfloat16))


def test_lru_eviction_demotes_device_to_cpu_and_cpu_drops():
    store = make_store(device=2, cpu=2)
    for name in ("a", "b"):
        store.put(name, make_block(ord(name)))
    store.get("a")  # a becomes the most recently used
    store.put("c", make_block(3))
    assert [store.contains(k) for k in "abc"] == ["device", "cpu", "device"]
    store.put("d", make_block(4))  # a is now the oldest on device
    store.put("e", make_block(5))  # c demoted; cpu holds b, a, c -> b dropped
    assert [store.contains(k) for k in "abcde"] == ["cpu", None, "cpu", "device", "device"]
    stats = store.stats
    assert stats.evictions == {"device": 3, "cpu": 1, "disk": 0}
    assert stats.bytes_used == {"device": 2 * block_bytes(), "cpu": 2 * block_bytes(), "disk": 0}


def test_hit_in_cpu_is_promoted_to_device():
    store = make_store(device=1, cpu=2)
    store.put("a", make_block(1))
    store.put("b", make_block(2))  # a demoted
    got, tier = store.get("a")
    assert tier == "cpu"
    assert_same(got, make_block(1), torch.float32)
    assert store.contains("a") == "device" and store.contains("b") == "cpu"
    assert store.get("a")[1] == "device"


def test_capacity_zero_disables_a_tier(tmp_path):
    assert make_store(device=0, cpu=10).put("a", make_block(1)) == "cpu"
    nowhere = make_store(tmp_path, device=0, cpu=0, disk=0)
    assert nowhere.put("a", make_block(1)) is None
    assert nowhere.get("a") is None and nowhere.stats.misses == 1
    assert not (tmp_path / NS).exists()


def test_block_bigger_than_a_tier_skips_it():
    store = TieredKVStore(NS, torch.device("cpu"), torch.float32, block_bytes() - 1, 4 * block_bytes(), None, 0)
    assert store.put("a", make_block(1)) == "cpu"
    assert store.get("a")[1] == "cpu"
    assert store.contains("a") == "cpu"  # not promoted: the device tier cannot hold it


# ---------------------------------------------------------------------------------------------------- keys


def test_chain_key_depends_on_parent_and_content_key_on_content_only():
    first = chain_key(None, [1, 2, 3], NS)
    assert first == chain_key(None, (1, 2, 3), NS) == chain_key(None, torch.tensor([1, 2, 3]), NS)
    assert chain_key(first, [4, 5], NS) != chain_key(chain_key(None, [9, 9, 9], NS), [4, 5], NS)
    assert chain_key(first, [4, 5], NS) != chain_key(None, [4, 5], NS)
    assert chain_key(None, [1, 2, 3], NS) != chain_key(None, [1, 2, 3], "other")

    chunk = [7, 8, 9]
    assert content_key(chunk, NS) == content_key(torch.tensor(chunk), NS)  # same chunk anywhere in a prompt
    assert content_key(chunk, NS) != content_key(chunk, NS, "variant")
    assert content_key(chunk, NS, "a", "b") != content_key(chunk, NS, "ab")
    assert content_key(chunk, NS) != chain_key(None, chunk, NS)


def test_wrong_expected_tokens_is_a_miss(tmp_path):
    store = make_store(tmp_path, disk=10)
    store.put("a", make_block(1))
    assert store.get("a", expect_tokens=[11, 12, 13, 99]) is None
    assert store.get("a", expect_tokens=list(TOKENS))[1] == "device"
    later = reopen(tmp_path)
    assert later.get("a", expect_tokens=[1, 2, 3, 4]) is None
    assert later.stats.misses == 1 and later.stats.corrupt == 0
    assert later.get("a", expect_tokens=TOKENS)[1] == "disk"


def test_put_rejects_a_block_that_does_not_fit_its_tokens_or_layout():
    store = make_store(layout=(2, 2, 8))
    with pytest.raises(ValueError, match="positions"):
        store.put("a", make_block(1, tokens=(1, 2)))
    with pytest.raises(ValueError, match="layout"):
        make_store(layout=(3, 2, 8)).put("a", make_block(1))
    with pytest.raises(ValueError, match="key"):
        store.put("../escape", make_block(1))


# ---------------------------------------------------------------------------------------------------- disk


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_write_through_is_hit_by_a_new_store(tmp_path, dtype):
    store = make_store(tmp_path, disk=10, dtype=dtype)
    block = make_block(1, dtype)
    assert store.put("a", block) == "device"
    assert store.disk_path("a").exists()

    later = make_store(tmp_path, disk=10, dtype=dtype)
    assert later.contains("a") == "disk"
    got, tier = later.get("a", expect_tokens=TOKENS)
    assert tier == "disk"
    assert_same(got, block, dtype)
    assert later.contains("a") == "device"
    assert later.stats.bytes_used["disk"] == store.disk_path("a").stat().st_size


def damage_and_reload(tmp_path, damage) -> TieredKVStore:
    store = make_store(tmp_path, disk=10)
    store.put("a", make_block(1))
    store.put("b", make_block(2))
    damage(store.disk_path("a"))
    return reopen(tmp_path)


def assert_discarded(store: TieredKVStore) -> None:
    path = store.disk_path("a")
    assert store.get("a") is None
    assert not path.exists() and store.contains("a") is None
    assert store.stats.corrupt == 1 and store.stats.misses == 1
    assert store.get("b")[1] == "disk"  # the undamaged neighbour still loads


def test_truncated_file_is_a_miss_and_is_removed(tmp_path):
    def cut_in_half(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    assert_discarded(damage_and_reload(tmp_path, cut_in_half))


def test_flipped_byte_in_tensor_data_is_a_miss_and_is_removed(tmp_path):
    def flip_data_byte(path):
        data = bytearray(path.read_bytes())
        data_start = 8 + int.from_bytes(data[:8], "little")
        data[(data_start + len(data)) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    assert_discarded(damage_and_reload(tmp_path, flip_data_byte))


def test_file_under_another_key_is_rejected(tmp_path):
    def replace_with_neighbour(path):
        path.write_bytes(path.with_name("b.safetensors").read_bytes())

    assert_discarded(damage_and_reload(tmp_path, replace_with_neighbour))


@pytest.mark.parametrize("other", [{"dtype": torch.bfloat16}, {"layout": (2, 2, 16)}])
def test_file_of_another_dtype_or_layout_is_rejected(tmp_path, other):
    make_store(tmp_path, disk=10, layout=(2, 2, 8)).put("a", make_block(1))
    mismatched = reopen(tmp_path, **other)
    assert mismatched.get("a") is None
    assert mismatched.stats.corrupt == 1


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_leftover_temp_file_of_a_killed_write_is_ignored_and_cleaned(tmp_path):
    store = make_store(tmp_path, disk=10)
    store.put("a", make_block(1))
    folder = store.disk_path("a").parent
    half = store.disk_path("a").read_bytes()[:100]
    killed = folder / f".b.{dead_pid()}.1.tmp"
    running = folder / f".c.{os.getppid()}.1.tmp"  # a writer that is still alive: left alone
    killed.write_bytes(half)
    running.write_bytes(half)

    later = reopen(tmp_path)
    assert later.contains("b") is None and later.contains("c") is None
    assert later.get("b") is None and later.get("c") is None
    assert later.get("a")[1] == "disk"
    assert not killed.exists() and running.exists()
    assert later.stats.corrupt == 0


def test_failed_write_leaves_no_file_and_keeps_the_block_in_memory(tmp_path, monkeypatch, capsys):
    import cachebench.reuse.store as store_module

    def torn_write(tensors, filename, metadata):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    store = make_store(tmp_path, disk=10)
    monkeypatch.setattr(store_module, "save_file", torn_write)
    assert store.put("a", make_block(1)) == "device"  # a full disk must not end the run
    store.put("b", make_block(2))
    assert os.listdir(tmp_path / NS) == []
    assert store.stats.write_failures == 2 and store.get("a") is not None
    assert capsys.readouterr().err.count("cannot write") == 1  # said once


def test_disk_capacity_evicts_least_recently_used_files(tmp_path):
    store = make_store(tmp_path, device=0, cpu=0, disk=2)
    store.put("a", make_block(1))
    store.put("b", make_block(2))
    assert store.get("a")[1] == "disk"  # refreshes a
    store.put("c", make_block(3))
    assert [store.contains(k) for k in "abc"] == ["disk", None, "disk"]
    assert not store.disk_path("b").exists()
    assert store.stats.evictions["disk"] == 1


def test_new_store_orders_files_by_modification_time(tmp_path):
    store = make_store(tmp_path, device=0, cpu=0, disk=10)
    for age, name in enumerate("abc"):
        store.put(name, make_block(age))
        os.utime(store.disk_path(name), (1_000_000 - age * 100, 1_000_000 - age * 100))  # a newest, c oldest
    smaller = make_store(tmp_path, device=0, cpu=0, disk=2)
    assert [smaller.contains(k) for k in "abc"] == ["disk", "disk", None]
    assert smaller.stats.evictions["disk"] == 1


def test_clear_forgets_every_tier(tmp_path):
    store = make_store(tmp_path, device=1, cpu=1, disk=10)
    for name in "abc":
        store.put(name, make_block(ord(name)))
    store.clear()
    assert [store.contains(k) for k in "abc"] == [None, None, None]
    assert list((tmp_path / NS).iterdir()) == []
    assert reopen(tmp_path).get("a") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tiers_pin_host_copies_and_return_blocks_on_the_device(tmp_path):
    size = block_bytes(torch.bfloat16)
    store = TieredKVStore(NS, torch.device("cuda"), torch.bfloat16, size, 2 * size, tmp_path, 10 * (size + 1024))
    store.put("a", make_block(1))
    store.put("b", make_block(2))  # a demoted to pinned host memory
    assert store.contains("a") == "cpu"
    assert store._cpu.blocks["a"].keys.is_pinned()
    got, tier = store.get("a")
    assert tier == "cpu" and got.keys.is_cuda and store.contains("a") == "device"
    assert torch.equal(got.keys.cpu(), make_block(1).keys.to(torch.bfloat16)) and got.tokens == TOKENS
    later = TieredKVStore(NS, torch.device("cuda"), torch.bfloat16, size, 2 * size, tmp_path, 10 * (size + 1024))
    got, tier = later.get("b")
    assert tier == "disk" and got.keys.is_cuda and later.get("b")[1] == "device"
    assert torch.equal(got.values.cpu(), make_block(2).values.to(torch.bfloat16))
