//! The CleverTap SDKs' sealed request (`{itp, itk, itv}`): any bytes open
//! or are refused, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tokenvault::http::clevertap::unseal(data);
});
