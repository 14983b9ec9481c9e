//! Numbers and addresses written into text by hand, for the paths every request takes: through the
//! formatting machinery (`format!`, `Display`) each cost several hundred to a thousand instructions.

use std::net::IpAddr;

/// Appends `n` in decimal. The digits are pushed one by one: for the short numbers of a request
/// (a status, an octet, a length) that costs less than checking them as UTF-8 and copying them.
pub fn push_decimal(out: &mut String, mut n: u64) {
    if n < 10 {
        out.push(char::from(b'0' + n as u8));
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n > 0 {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// Appends `value` (0 ≤ value < 10^width) with leading zeros to `width` digits.
pub fn push_padded(out: &mut String, value: i64, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (value / 10i64.pow(place) % 10) as u8));
    }
}

/// Appends `ip` as `Display` writes it (IPv4 by hand, IPv6 through `Display`).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, octet.into());
            }
        }
        IpAddr::V6(ip) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// `ip` as `Display` writes it.
pub fn ip_string(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_read_as_display_writes_them() {
        for n in [0, 7, 10, 99, 65_535, 1_000_000_007, u64::MAX] {
            let mut out = String::from("x");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
        for ip in [
            "0.0.0.0",
            "10.0.255.7",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }
}
