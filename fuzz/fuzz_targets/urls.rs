//! Endpoint URL checks under strict and dev rules: a verdict, never a panic; and a URL
//! the strict rules accept never names a special address literally.
#![no_main]
use hookline_core::ssrf::{check_url, special_range, AddressPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let strict = AddressPolicy::default();
    if let Ok(url) = check_url(&text, &strict) {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            assert!(special_range(ip).is_none(), "strict rules accepted {ip}");
        }
    }
    let dev = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
    let _ = check_url(&text, &dev);
});
