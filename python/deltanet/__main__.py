"""`python -m deltanet info`: version, backends this build knows, and what each can do here."""

import sys

from . import Backend, Error, __version__, backend_names
from ._native import kernel_threads, omp_team


def info() -> int:
    print(f"deltanet {__version__} (Python package, native module deltanet._native)")
    for name in backend_names():
        try:
            b = Backend(name)
        except Error as e:
            print(f"  {name:8s} unavailable: {e}")
            continue
        c = b.capabilities()
        print(
            f"  {name:8s} {c['device']}, {c['native_layout']} state, state dtypes {'/'.join(c['state_dtypes'])}, "
            f"inputs {'/'.join(c['input_dtypes'])}, chunk {c['chunk_size']}"
        )
    print("fla-compatible functions run on the cpu backend (cpu-vk with state_v_first)")
    print(f"CPU kernels run on {kernel_threads()} threads (RAYON_NUM_THREADS; the importing thread is one of them)")
    if omp_team():
        print("fla-compatible calls (prefill, decode, conv) run on the OpenMP team loaded in this process (torch's); DELTANET_OMP_TEAM=0 turns it off")
    else:
        print("fla-compatible calls run on the calling thread and the threads above (no OpenMP runtime loaded: torch not imported, or DELTANET_OMP_TEAM=0)")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in ([], ["info"]):
        return info()
    print("usage: python -m deltanet info", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
