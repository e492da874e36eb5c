//! Batch planning ([`deltanet_core::plan`]): the chain segments of draft trees.

use deltanet_core::plan::{chain_segments, ChainSegment};

fn seg(start: usize, end: usize, parent: Option<usize>) -> ChainSegment {
    ChainSegment { start, end, parent }
}

#[test]
fn chain_segments_of_trees() {
    assert_eq!(chain_segments(&[-1, 0, 1, 2]), vec![seg(0, 4, None)]);
    assert_eq!(chain_segments(&[-1, 0, 0, 2]), vec![seg(0, 2, None), seg(2, 4, Some(0))]);
    assert_eq!(chain_segments(&[-1, -1, 1, 1]), vec![seg(0, 1, None), seg(1, 3, None), seg(3, 4, Some(1))]);
    assert_eq!(chain_segments(&[-1, 0, 0, 0]), vec![seg(0, 2, None), seg(2, 3, Some(0)), seg(3, 4, Some(0))]);
    assert_eq!(chain_segments(&[-1]), vec![seg(0, 1, None)]);
}
