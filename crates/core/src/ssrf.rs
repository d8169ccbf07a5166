//! Which addresses Hookline may deliver to. Payment webhooks must never become a way
//! into the operator's network: loopback, private, link-local, metadata and other
//! special ranges are refused unless an allow-list says otherwise. The same rules run
//! on URL literals at creation and on every resolved address at connect time.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest endpoint URL accepted by default.
pub const URL_BYTES_MAX: usize = 2_048;

/// Why an address is refused. The names are stable: they appear in API errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("loopback address")]
    Loopback,
    #[error("private network address")]
    Private,
    #[error("carrier-grade NAT address")]
    CarrierGradeNat,
    #[error("link-local address (includes cloud metadata)")]
    LinkLocal,
    #[error("unspecified address")]
    Unspecified,
    #[error("unique-local IPv6 address")]
    UniqueLocal,
    #[error("multicast or broadcast address")]
    Multicast,
    #[error("reserved or documentation address")]
    Reserved,
}

impl Forbidden {
    pub fn code(self) -> &'static str {
        match self {
            Forbidden::Loopback => "loopback",
            Forbidden::Private => "private",
            Forbidden::CarrierGradeNat => "cgnat",
            Forbidden::LinkLocal => "link_local",
            Forbidden::Unspecified => "unspecified",
            Forbidden::UniqueLocal => "unique_local",
            Forbidden::Multicast => "multicast",
            Forbidden::Reserved => "reserved",
        }
    }
}

/// The address rules in force. `allow` re-enables chosen ranges; `allow_all_private`
/// (the `--dev` mode) turns the special-range rules off entirely.
#[derive(Clone, Debug)]
pub struct AddressPolicy {
    pub allow: Vec<IpNet>,
    pub allow_all_private: bool,
    pub allow_plain_http: bool,
    pub url_bytes_max: usize,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy {
            allow: Vec::new(),
            allow_all_private: false,
            allow_plain_http: false,
            url_bytes_max: URL_BYTES_MAX,
        }
    }
}

impl AddressPolicy {
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Forbidden> {
        if self.allow_all_private || self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match special_range(ip) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// The special range an address falls in, if any. IPv6 forms that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4) are judged by the embedded address.
pub fn special_range(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) if ip.is_unspecified() => Some(Forbidden::Unspecified),
        (0, _, _) => Some(Forbidden::Reserved),
        (127, _, _) => Some(Forbidden::Loopback),
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Some(Forbidden::Private),
        (100, 64..=127, _) => Some(Forbidden::CarrierGradeNat),
        (169, 254, _) => Some(Forbidden::LinkLocal),
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => Some(Forbidden::Reserved),
        (224..=239, _, _) => Some(Forbidden::Multicast),
        (240..=255, _, _) if ip.is_broadcast() => Some(Forbidden::Multicast),
        (240..=255, _, _) => Some(Forbidden::Reserved),
        _ => None,
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some(Forbidden::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Forbidden::Loopback);
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but still routable by some stacks).
    if let Some(v4) = ip.to_ipv4() {
        return special_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:0:a.b.c.d (IPv4-translated, SIIT), which `to_ipv4` does not map back.
    if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        return special_v4(embedded(seg[6], seg[7]));
    }
    match seg[0] {
        // NAT64: the well-known prefix 64:ff9b::/96 carries the IPv4 address last. The
        // local-use 64:ff9b:1::/48 is a network's own (never routed between networks), and
        // where it embeds the address depends on the prefix length its translator uses, so
        // none of it is public.
        0x0064 if seg[1] == 0xff9b && seg[2] == 1 => Some(Forbidden::Reserved),
        0x0064 if seg[1] == 0xff9b => special_v4(embedded(seg[6], seg[7])),
        // 6to4: 2002:AABB:CCDD::/48 carries the IPv4 address AA.BB.CC.DD.
        0x2002 => special_v4(embedded(seg[1], seg[2])),
        // Teredo (2001::/32) obscures its IPv4 endpoints; documentation 2001:db8::/32.
        0x2001 if seg[1] == 0 || seg[1] == 0x0db8 => Some(Forbidden::Reserved),
        s if s & 0xfe00 == 0xfc00 => Some(Forbidden::UniqueLocal),
        s if s & 0xffc0 == 0xfe80 => Some(Forbidden::LinkLocal),
        s if s & 0xffc0 == 0xfec0 => Some(Forbidden::Private),
        s if s & 0xff00 == 0xff00 => Some(Forbidden::Multicast),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("URL is not valid: {0}")]
    Invalid(String),
    #[error("URL is longer than {0} bytes")]
    TooLong(usize),
    #[error("URL scheme must be https (http only in dev mode), or redis, amqp or nats for a queue")]
    Scheme,
    #[error("URL must not carry credentials")]
    Credentials,
    #[error("URL host is refused: {0}")]
    Forbidden(Forbidden),
}

/// Validates an endpoint or callback URL at creation. A host that is an IP literal
/// (in any spelling the URL standard accepts: `2130706433`, `0x7f.1`, `127.1`, `[::1]`)
/// is checked here; names are checked again on every resolved address at connect time.
/// The characters of an RFC 3986 URI besides letters and digits.
const URI_PUNCTUATION: &str = "-._~:/?#[]@!$&'()*+,;=%";

pub fn check_url(text: &str, policy: &AddressPolicy) -> Result<url::Url, UrlError> {
    if text.len() > policy.url_bytes_max {
        return Err(UrlError::TooLong(policy.url_bytes_max));
    }
    // Spelled as the API documents it, lowercase: `url` would also take `HTTPS://`.
    let queue = crate::queue_url::is_queue_url(text);
    if !text.starts_with("https://") && !text.starts_with("http://") && !queue {
        return Err(UrlError::Scheme);
    }
    // An RFC 3986 URI, as documented: `url` would also take spaces, raw non-ASCII (IRIs) and
    // the like, and quietly encode them. International names are given in punycode.
    if let Some(c) = text.chars().find(|c| !c.is_ascii_alphanumeric() && !URI_PUNCTUATION.contains(*c)) {
        return Err(UrlError::Invalid(format!("{c:?} is not allowed in a URI; percent-encode it")));
    }
    let parsed = url::Url::parse(text).map_err(|e| UrlError::Invalid(e.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if policy.allow_plain_http => {}
        _ if queue => {
            crate::queue_url::QueueUrl::parse(&parsed).transpose().map_err(UrlError::Invalid)?;
        }
        _ => return Err(UrlError::Scheme),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = match queue {
        true => crate::queue_url::web_host(&parsed),
        false => parsed.host().map(|h| h.to_owned()),
    };
    let ip = match host {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            if name == "localhost" || name.ends_with(".localhost") {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                return Ok(parsed);
            }
        }
        None => return Err(UrlError::Invalid("missing host".into())),
    };
    policy.check_ip(ip).map_err(UrlError::Forbidden)?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> AddressPolicy {
        AddressPolicy::default()
    }

    fn check(url: &str, expect: Result<(), UrlError>) {
        assert_eq!(check_url(url, &strict()).map(|_| ()), expect, "{url}");
    }

    #[test]
    fn url_table() {
        use Forbidden::*;
        let no = |f| Err(UrlError::Forbidden(f));
        check("https://merchant.example/hooks", Ok(()));
        check("https://93.184.216.34/hooks", Ok(()));
        check("http://merchant.example/hooks", Err(UrlError::Scheme));
        check("ftp://merchant.example/", Err(UrlError::Scheme));
        check("redis://queue.example/payments", Ok(()));
        check("nats://93.184.216.34/payments.in", Ok(()));
        check("amqp://127.0.0.1/events?routingKey=payment", no(Loopback));
        check("nats://2130706433/payments", no(Loopback));
        check("redis://10.0.0.5/payments", no(Private));
        check("amqp://guest:guest@queue.example/events", Err(UrlError::Credentials));
        check("https://user:pw@merchant.example/", Err(UrlError::Credentials));
        check("https://127.0.0.1/", no(Loopback));
        check("https://127.1/", no(Loopback));
        check("https://2130706433/", no(Loopback));
        check("https://0x7f.0.0.1/", no(Loopback));
        check("https://0177.0.0.1/", no(Loopback));
        check("https://localhost:8080/", no(Loopback));
        check("https://[::1]/", no(Loopback));
        check("https://10.1.2.3/", no(Private));
        check("https://172.16.0.1/", no(Private));
        check("https://192.168.1.1/", no(Private));
        check("https://100.64.0.1/", no(CarrierGradeNat));
        check("https://169.254.169.254/latest/meta-data", no(LinkLocal));
        check("https://0.0.0.0/", no(Unspecified));
        check("https://[::]/", no(Unspecified));
        check("https://[fd00::1]/", no(UniqueLocal));
        check("https://[fe80::1]/", no(LinkLocal));
        check("https://[::ffff:127.0.0.1]/", no(Loopback));
        check("https://[::ffff:169.254.169.254]/", no(LinkLocal));
        check("https://[::127.0.0.1]/", no(Loopback));
        check("https://[64:ff9b::10.0.0.1]/", no(Private));
        check("https://[64:ff9b::8.8.8.8]/", Ok(()));
        // The local-use NAT64 prefix, with 169.254.169.254 where a /48 translator puts it
        // (it read 8.8.8.8 at the /96 place), and the IPv4-translated form.
        check("https://[64:ff9b:1:a9fe:a9:fe00:808:808]/", no(Reserved));
        check("https://[::ffff:0:127.0.0.1]/", no(Loopback));
        check("https://[::ffff:0:8.8.8.8]/", Ok(()));
        check("https://[2002:7f00:1::]/", no(Loopback));
        check("https://[2002:a9fe:a9fe::]/", no(LinkLocal));
        check("https://[2606:4700::1111]/", Ok(()));
        check(&format!("https://a.example/{}", "x".repeat(URL_BYTES_MAX)), Err(UrlError::TooLong(URL_BYTES_MAX)));
    }

    #[test]
    fn allow_list_and_dev_mode_reopen_ranges() {
        let allow = AddressPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Default::default() };
        assert_eq!(allow.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(allow.check_ip("10.0.0.1".parse().unwrap()), Err(Forbidden::Private));
        let dev = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        assert!(check_url("http://127.0.0.1:9000/hook", &dev).is_ok());
    }
}
