//! [`NpuMemory`](deltanet_backend_npu::NpuMemory): range and overlap checks, bytes really moved.

use crate::common::*;
use deltanet_core::*;

#[test]
fn npu_memory_checks_ranges_and_overlap() {
    let (_rec, d) = setup(A2);
    let mem = d.memory().clone();
    assert_eq!(mem.device(), Device::Npu(0));
    let mut a = mem.alloc_zeroed(64).unwrap();
    let mut b = mem.alloc_zeroed(16).unwrap();
    let mut out = [1u8; 64];
    mem.read(&a, 0, &mut out).unwrap();
    assert_eq!(out, [0u8; 64], "alloc_zeroed zeroes");
    mem.write(&mut a, 8, &[1, 2, 3, 4]).unwrap();
    mem.copy_within(&mut a, 8, 32, 4).unwrap();
    mem.copy_between(&a, 32, &mut b, 12, 4).unwrap();
    let mut got = [0u8; 4];
    mem.read(&b, 12, &mut got).unwrap();
    assert_eq!(got, [1, 2, 3, 4]);
    mem.zero(&mut b, 12, 2).unwrap();
    mem.read(&b, 12, &mut got).unwrap();
    assert_eq!(got, [0, 0, 3, 4]);
    assert!(mem.copy_within(&mut a, 8, 10, 4).is_err(), "overlapping ranges");
    assert!(mem.copy_between(&a, 62, &mut b, 0, 4).is_err());
    assert!(mem.write(&mut b, 15, &[1, 2]).is_err());
    assert!(mem.zero(&mut b, 0, 17).is_err());
    let empty = mem.alloc_zeroed(0).unwrap();
    assert_eq!(mem.len(&empty), 0);
}
