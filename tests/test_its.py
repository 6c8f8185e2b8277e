"""The ITS: registers by name, the userspace rules of GRP_ITS_REGS, reset,
table save/restore with nothing mapped (6.12 and 6.1 answer identically), and the
table ABI REV0 codecs."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.devices.its import Cte, Dte, GITS, Its, Ite, ItsTables, read_tables, pack
from kvmdev.devices.vgic import VgicV3

ITS_BASE = 0x08080000
TABLES = 0x70000000          # guest RAM for the ITS tables in these tests
REGS = "KVM_DEV_ARM_VGIC_GRP_ITS_REGS"


@pytest.fixture
def its(arm64_kvm: kvmdev.Kvm, arm64_gic: int):
    """A VM with two vCPUs, an initialized VGIC v3 and one ITS at ITS_BASE (on a
    GICv2 host: asserts that no ITS can be created, and ends the test)."""
    vm = arm64_kvm.create_vm()
    if arm64_gic != 3:
        raises(E.ENODEV, vm.create_device, "ARM_VGIC_ITS")
        vm.close()
        yield None  # each test returns at once: the assertion above is the GICv2 host's answer
        return
    for i in range(2):
        vm.create_vcpu(i).vcpu_init(["PSCI_0_2"])
    g = vm.create_device("ARM_VGIC_V3")
    assert isinstance(g, VgicV3)
    dev = vm.create_device("ARM_VGIC_ITS")
    assert isinstance(dev, Its)
    raises(E.ENXIO, lambda: dev.regs["GITS_CTLR"])   # no frame address yet
    assert dev.regs.has("GITS_CTLR")                  # though HAS says yes
    dev.base = ITS_BASE
    g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    g.init()
    yield dev
    vm.close()


pytestmark = pytest.mark.arm64


def test_reset_values(its) -> None:
    if its is None:
        return
    r = its.regs
    assert r["GITS_CTLR"] == 0x80000000                 # disabled, quiescent
    assert r["GITS_IIDR"] == 0x4B00043B and r.fields("GITS_IIDR")["Revision"] == 0  # ABI REV0
    t = r.fields("GITS_TYPER")
    assert (t["Physical"], t["ITT_entry_size"], t["IDbits"], t["Devbits"]) == (1, 7, 15, 15)
    assert r["GITS_CBASER"] == r["GITS_CWRITER"] == r["GITS_CREADR"] == 0
    b0, b1 = r.fields("GITS_BASER0"), r.fields("GITS_BASER1")
    assert (b0["Type"], b0["EntrySize"], b0["PageSize"], b0["Valid"]) == (1, 7, 2, 0)  # device table, 64K pages
    assert (b1["Type"], b1["EntrySize"], b1["Valid"]) == (4, 7, 0)                    # collection table
    assert r["GITS_BASER0"] == 0x1907000000000600 and r["GITS_BASER1"] == 0x1C07000000000600
    assert all(r[f"GITS_BASER{n}"] == 0 for n in range(2, 8))
    assert r["GITS_PIDR2"] == 0x3B


def test_offsets(its) -> None:
    """64-bit registers take 8-byte aligned offsets only (EINVAL, even for HAS);
    unknown offsets are ENXIO."""
    if its is None:
        return
    for off in (0x0C, 0x84, 0x2):
        raises(E.EINVAL, its.has_attr, REGS, off)
        raises(E.EINVAL, its.get_attr, REGS, off)
    for off in (0x10, 0x140, 0x8000):
        assert not its.has_attr(REGS, off)
        raises(E.ENXIO, its.get_attr, REGS, off)
    assert its.has_attr(REGS, 0xFFD0) and its.get_attr(REGS, 0xFFD0) == 0x40  # GITS_PIDR4
    its.regs["GITS_TYPER"] = 0                          # read-only: ignored
    assert its.regs["GITS_TYPER"] == 0x1EF71


def test_command_queue_registers(its) -> None:
    if its is None:
        return
    r = its.regs
    r["GITS_CBASER"] = (1 << 64) - 1                   # outer cacheability -> SameAsInner, [15:12] cleared
    assert r["GITS_CBASER"] == 0xFF1FFFFFFFFF0FFF
    r["GITS_CBASER"] = 0x8000000040000000              # inner nCnB -> RaWb
    assert r["GITS_CBASER"] == 0x9800000040000000
    r["GITS_CBASER"] = 0xB80000004000F401              # 8K queue
    assert r["GITS_CBASER"] == 0xB800000040000401
    r["GITS_CWRITER"] = 0x21                           # Offset bits only
    assert r["GITS_CWRITER"] == 0x20
    r["GITS_CWRITER"] = 0x2000                         # past the 8K queue: ignored
    assert r["GITS_CWRITER"] == 0x20
    r["GITS_CREADR"] = 0x40
    assert r["GITS_CREADR"] == 0x40
    raises(E.EINVAL, r.__setitem__, "GITS_CREADR", 0x2000)  # past the queue: refused (doc: restore it)
    r["GITS_CBASER"] = 0x8000000040000000              # a CBASER write resets both
    assert r["GITS_CWRITER"] == r["GITS_CREADR"] == 0


def test_table_registers_and_abi(its) -> None:
    if its is None:
        return
    r = its.regs
    r["GITS_BASER0"] = (1 << 64) - 1                   # Type, EntrySize, PageSize are read-only
    assert r["GITS_BASER0"] == 0xF907FFFFFFFFFEFF
    r["GITS_BASER1"] = 0x8000000050000000
    assert r["GITS_BASER1"] == 0x9C07000050000200
    r["GITS_BASER2"] = (1 << 64) - 1                   # RAZ/WI
    assert r["GITS_BASER2"] == 0
    r["GITS_IIDR"] = 0x43B                             # Revision 0: the only ABI
    for bad in (0x1000, 0xFFFF):
        e = raises(E.EINVAL, r.__setitem__, "GITS_IIDR", bad)
        assert "KVM_DEV_ARM_VGIC_GRP_ITS_REGS" in str(e)
    r["GITS_IIDR"] = 0                                 # only the Revision field is looked at
    assert r["GITS_IIDR"] == 0x4B00043B


def test_enable_reset(its) -> None:
    """GITS_CTLR.Enabled needs valid CBASER and device/collection BASERs (else the
    write is ignored); while enabled CBASER/BASER writes are ignored and CREADR is
    EBUSY; CTRL_RESET is the doc's "ITS Reset State"."""
    if its is None:
        return
    r = its.regs
    r["GITS_CTLR"] = 1
    assert r["GITS_CTLR"] == 0x80000000                # nothing valid yet: ignored
    r["GITS_CBASER"] = 0x8000000040000000
    r["GITS_BASER0"] = 0x8000000050000000
    r["GITS_BASER1"] = 0x8000000050010000
    r["GITS_CTLR"] = 1
    assert r["GITS_CTLR"] == 0x80000001
    r["GITS_CBASER"] = 0x8000000060000000
    r["GITS_BASER0"] = 0x8000000060000000
    assert r["GITS_CBASER"] == 0x9800000040000000 and r["GITS_BASER0"] == 0x9907000050000200
    raises(E.EBUSY, r.__setitem__, "GITS_CREADR", 0)
    its.reset()
    assert r["GITS_CTLR"] == 0x80000000
    assert r["GITS_CBASER"] == r["GITS_CREADR"] == r["GITS_CWRITER"] == 0
    assert r["GITS_BASER0"] == 0x1907000050000200      # Valid cleared, the rest kept
    assert r["GITS_BASER1"] == 0x1C07000050010200
    assert r["GITS_IIDR"] == 0x4B00043B                # the ABI is unchanged


def test_save_restore_nothing_mapped(its) -> None:
    """With no device or collection mapped, SAVE_TABLES writes only the collection
    table's terminating invalid entry; both need the tables in guest RAM (EFAULT)."""
    if its is None:
        return
    r = its.regs
    r["GITS_BASER0"] = 0x8000000000000000 | TABLES            # one 64K page each
    r["GITS_BASER1"] = 0x8000000000000000 | (TABLES + 0x10000)
    for op in (its.save_tables, its.restore_tables):
        e = raises(E.EFAULT, op)
        assert "invalid guest RAM access" in str(e)
    mem = its.vm.add_memory(TABLES, 0x20000)
    mem.write(TABLES, b"\xAA" * 8)
    mem.write(TABLES + 0x10000, b"\x55" * 16)
    its.save_tables()
    assert mem.read(TABLES + 0x10000, 16) == bytes(8) + b"\x55" * 8  # one invalid CTE, then untouched
    assert mem.read(TABLES, 8) == b"\xAA" * 8                        # no device: nothing written
    mem.write(TABLES, bytes(8))
    its.restore_tables()
    assert read_tables(r, mem.read) == ItsTables()


# -- table ABI REV0 (no backend) -------------------------------------------------------------

@pytest.mark.parametrize("entry,value", [
    (Dte(itt_addr=0x12345600, size=4, next=3), 1 << 63 | 3 << 49 | 0x123456 << 5 | 4),
    (Dte(itt_addr=0xF_FFFF_FFFF_FF00, size=31, next=(1 << 14) - 1), (1 << 64) - 1),
    (Cte(icid=7, rdbase=2), 1 << 63 | 2 << 16 | 7),
    (Ite(lpi=8192, icid=7, next=1), 1 << 48 | 8192 << 16 | 7),
    (Ite(lpi=0xFFFFFFFF, icid=0xFFFF, next=(1 << 16) - 1), (1 << 64) - 1),
])
def test_abi_entries(entry, value: int) -> None:
    """Each entry against the bit layout of the doc's ITS Table ABI REV0."""
    assert entry.encode() == value and type(entry).decode(value) == entry


def test_abi_entry_limits() -> None:
    with pytest.raises(ValueError, match="256-byte"):
        Dte(itt_addr=0x1080, size=1).encode()
    with pytest.raises(ValueError, match="next"):
        Dte(itt_addr=0x1000, size=1, next=1 << 14).encode()
    with pytest.raises(ValueError, match="ICID"):
        Cte(icid=1 << 16, rdbase=0).encode()
    assert not Ite.decode(0x1234 << 48 | 5).valid        # pINTID 0: invalid whatever else is set
    assert pack(Cte(1, 0).encode())[-1] == 0x80          # little endian: V in the last byte


class _Regs(dict):
    def __getitem__(self, name: str) -> int:
        return self.get(name, 0)


def test_read_tables_flat_and_two_level() -> None:
    """read_tables walks next-offset chains (skipping invalid entries between
    them), every ITT, the collection list to its first invalid entry, and the
    two-level device table's L1 pointers; checked on memory built here."""
    mem = bytearray(0x80000)
    def put(gpa: int, v: int) -> None:
        mem[gpa:gpa + 8] = pack(v)
    read = lambda gpa, n: bytes(mem[gpa:gpa + n])  # noqa: E731
    # ITTs: device 1 has events 0 and 5; device 20000 has event 2
    put(0x70000, Ite(lpi=8192, icid=0, next=5).encode())
    put(0x70000 + 5 * 8, Ite(lpi=8193, icid=1).encode())
    put(0x70100 + 2 * 8, Ite(lpi=9000, icid=1).encode())
    put(0x60000, Cte(icid=0, rdbase=0).encode())
    put(0x60008, Cte(icid=1, rdbase=1).encode())
    put(0x60018, Cte(icid=9, rdbase=1).encode())       # after the invalid entry: not read
    regs = _Regs(GITS_BASER1=1 << 63 | 4 << 56 | 0x60000)
    # flat: DTEs at index 1 and 20000 (next capped at 2^14-1, an invalid entry bridges the gap)
    put(0x00000 + 1 * 8, Dte(itt_addr=0x70000, size=2, next=(1 << 14) - 1).encode())
    put(0x00000 + 20000 * 8, Dte(itt_addr=0x70100, size=3).encode())
    regs["GITS_BASER0"] = 1 << 63 | 1 << 56 | 0x00000 | 2   # 3 pages: 24576 entries
    want = ItsTables(devices={1: {0: (8192, 0), 5: (8193, 1)}, 20000: {2: (9000, 1)}},
                     itt_bits={1: 3, 20000: 4}, collections={0: 0, 1: 1})
    assert read_tables(regs, read) == want                 # type: ignore[arg-type]
    # two-level: L1 at 0x40000, entry 2 -> L2 page at 0x50000 holding devices 2*8192 + k
    mem[0:0x30000] = bytes(0x30000)
    put(0x40000 + 2 * 8, 1 << 63 | 0x50000)
    put(0x50000 + 7 * 8, Dte(itt_addr=0x70000, size=2).encode())
    regs["GITS_BASER0"] = 1 << 63 | 1 << 62 | 1 << 56 | 0x40000
    got = read_tables(regs, read)                           # type: ignore[arg-type]
    assert got.devices == {2 * 8192 + 7: {0: (8192, 0), 5: (8193, 1)}}
    assert GITS.lookup("GITS_BASER7")[1] == 0x138


def test_collection_table_is_never_two_level(its) -> None:
    if its is None:
        return
    its.regs["GITS_BASER1"] = (1 << 64) - 1
    assert its.regs.fields("GITS_BASER1")["Indirect"] == 0 and its.regs.fields("GITS_BASER1")["Type"] == 4


def test_two_its_frames_may_overlap(its) -> None:
    """Doc: each ITS "has to have a separate, non-overlapping MMIO region"; the
    kernel does not check it (6.12 and 6.1)."""
    if its is None:
        return
    other = its.vm.create_device("ARM_VGIC_ITS")
    assert isinstance(other, Its)
    other.base = ITS_BASE + 0x10000                    # inside the first ITS's 128K frame
    assert other.base == ITS_BASE + 0x10000 and other.regs["GITS_CTLR"] == 0x80000000
