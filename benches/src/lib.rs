//! Switchyard's load harness: the sample backend that `scripts/run` and `scripts/bench` put behind the proxies,
//! and (with `scripts/bench`) the peer comparison and micro benchmarks.
