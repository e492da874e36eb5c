// A kernel of a K-major dispatcher only accepts `StatePool<_, KMajor>`.
use deltanet_core::*;

fn run_extend<D: KernelDispatcher<Layout = KMajor, Memory = HostMemory>>(d: &D, pool: &mut StatePool<HostMemory, VMajor>, b: &ExtendBatch, io: DeltaIo<'_>) {
    let _ = d.extend(pool, 0, b, io);
}

fn main() {}
