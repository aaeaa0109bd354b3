//! The request flow on the fake host: a valid configuration derived from
//! the input, then streams, bodies, trailers, responses, resets, clock
//! moves, ticks, shadow answers and configuration replacements in any
//! order, with invariants checked throughout (counters only grow, one
//! decision per request, totals add up, nothing in flight or held once
//! all is done). The driver is `traffic_shift::flow::fuzz` (feature
//! `fake-host`), so the unit tests replay `tests/fuzz/seeds/flow` too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    traffic_shift::flow::fuzz::run(data);
});
