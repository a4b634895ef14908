//! End-to-end suite for tenant-operator; the tests live in `e2e/`.
