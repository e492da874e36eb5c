//! Checked size arithmetic: the one path every dimension takes on its way to
//! an element or byte count. An impossible size is [`Error::InvalidConfig`]
//! naming the field, never a wrapped value (a wrapped size passes bounds
//! checks and addresses memory outside a buffer).

use crate::error::{Error, Result};

/// `factors` multiplied in checked arithmetic; `field` names the result in the error.
pub fn product(field: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| Error::InvalidConfig(format!("`{field}` = {} overflows usize", join(factors, " * "))))
}

/// `terms` summed in checked arithmetic.
pub fn sum(field: &str, terms: &[usize]) -> Result<usize> {
    terms
        .iter()
        .try_fold(0usize, |acc, &t| acc.checked_add(t))
        .ok_or_else(|| Error::InvalidConfig(format!("`{field}` = {} overflows usize", join(terms, " + "))))
}

/// A byte count that one allocation can hold (`<= isize::MAX`, what Rust and
/// every device allocator accept); `field` names it in the error.
pub fn bytes(field: &str, factors: &[usize]) -> Result<usize> {
    let b = product(field, factors)?;
    if b > isize::MAX as usize {
        return Err(Error::InvalidConfig(format!("`{field}` = {b} bytes exceeds the largest possible allocation")));
    }
    Ok(b)
}

fn join(xs: &[usize], sep: &str) -> String {
    xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_names_the_field() {
        assert_eq!(product("x", &[3, 4]).unwrap(), 12);
        let Err(Error::InvalidConfig(m)) = product("state_elems", &[1 << 32, 1 << 32]) else { panic!("accepted") };
        assert!(m.contains("state_elems"), "{m}");
        assert!(sum("conv_dim", &[usize::MAX, 1]).is_err());
        assert!(bytes("b", &[1 << 62, 2]).is_err());
        assert_eq!(bytes("b", &[1 << 20, 4]).unwrap(), 1 << 22);
    }
}
