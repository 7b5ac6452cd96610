"""bench.sm90.ptx_facts, which the sm_90 compile tests (test_sm90_compile.py) read the PTX with."""
from bench.sm90 import ptx_facts


def test_ptx_facts_reads_vector_widths_and_mma():
    ptx = """
    ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    @%p1 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];
    st.global.v2.b32 [ %rd3 + 0 ], { %r5, %r6 };
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 { %f1 }, { %r1 }, { %r2 }, { %f2 };
    bar.sync 0;
    @%p3 bar.sync 0;
    barrier.sync 0;
    // bar.sync in a comment is no barrier
    """
    assert ptx_facts(ptx) == {"load_bits": 128, "store_bits": 64, "mma": ["mma.bf16"], "bar_sync": 3}
    assert ptx_facts("ld.global.f32 %f1, [%rd1];") == {"load_bits": 32, "store_bits": 0, "mma": [], "bar_sync": 0}
