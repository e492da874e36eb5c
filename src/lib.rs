//! deltanet facade
