//! Configuration parsing and validation never panics, whatever the bytes,
//! and every refusal names at least one field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traffic_shift::config::Config;

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(config) => {
            // A valid config can be looked up and decided on.
            let _ = config.route(b"GET", b"/");
        }
        Err(errors) => assert!(!errors.0.is_empty()),
    }
});
