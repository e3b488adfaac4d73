"""Test helpers shared by integration tests, e2e tests and benchmarks (real control plane, PKI)."""
