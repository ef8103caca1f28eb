//! Nothing: the unit tests are the `unit` test target, built from ../../src/lib.rs.
