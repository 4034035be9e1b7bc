//! Well-formed IPv4/IPv6 packets with TCP, UDP or ICMP inside, checksums right, so that
//! fuzzed fields reach the stack's socket logic instead of stopping at a bad checksum.

use arbitrary::Arbitrary;
use std::net::IpAddr;

/// What an IP packet carries; ports and flags are the fuzzer's.
#[derive(Debug, Arbitrary)]
pub enum Transport {
    Tcp {
        src_port: u16,
        /// 80 (the listener) unless set.
        dst_port: Option<u16>,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        /// TCP options, padded to a multiple of four bytes (at most 40).
        options: Vec<u8>,
        payload: Vec<u8>,
    },
    Udp {
        src_port: u16,
        /// 53 (the DNS socket) unless set.
        dst_port: Option<u16>,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 with this type, code and body.
    Icmp { kind: u8, code: u8, body: Vec<u8> },
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The transport header and payload, with its checksum over the pseudo-header.
fn segment(src: IpAddr, dst: IpAddr, t: &Transport) -> (u8, Vec<u8>) {
    let (proto, mut seg, ck_at) = match t {
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            window,
            options,
            payload,
        } => {
            let mut opts = options[..options.len().min(40)].to_vec();
            opts.resize(opts.len().div_ceil(4) * 4, 0);
            let mut s = Vec::with_capacity(20 + opts.len() + payload.len());
            s.extend_from_slice(&src_port.to_be_bytes());
            s.extend_from_slice(&dst_port.unwrap_or(80).to_be_bytes());
            s.extend_from_slice(&seq.to_be_bytes());
            s.extend_from_slice(&ack.to_be_bytes());
            s.push((((20 + opts.len()) / 4) as u8) << 4);
            s.push(*flags);
            s.extend_from_slice(&window.to_be_bytes());
            s.extend_from_slice(&[0, 0, 0, 0]);
            s.extend_from_slice(&opts);
            s.extend_from_slice(payload);
            (6u8, s, 16)
        }
        Transport::Udp {
            src_port,
            dst_port,
            payload,
        } => {
            let mut s = Vec::with_capacity(8 + payload.len());
            s.extend_from_slice(&src_port.to_be_bytes());
            s.extend_from_slice(&dst_port.unwrap_or(53).to_be_bytes());
            s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            s.extend_from_slice(payload);
            (17u8, s, 6)
        }
        Transport::Icmp { kind, code, body } => {
            let mut s = vec![*kind, *code, 0, 0];
            s.extend_from_slice(body);
            (if src.is_ipv4() { 1u8 } else { 58u8 }, s, 2)
        }
    };
    seg.truncate(1400);
    let mut acc = 0;
    // ICMPv4 has no pseudo-header; the others do.
    if proto != 1 {
        acc = sum(&octets(src), acc);
        acc = sum(&octets(dst), acc);
        acc += u32::from(proto) + seg.len() as u32;
    }
    let ck = fold(sum(&seg, acc));
    let ck = if proto == 17 && ck == 0 { 0xffff } else { ck };
    seg[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
    (proto, seg)
}

/// An IP packet from `src` to `dst` (same family) carrying `t`.
pub fn ip_packet(src: IpAddr, dst: IpAddr, t: &Transport) -> Vec<u8> {
    let (proto, seg) = segment(src, dst, t);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0x45, 0];
            p.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let ck = fold(sum(&p, 0));
            p[10..12].copy_from_slice(&ck.to_be_bytes());
            p.extend_from_slice(&seg);
            p
        }
        _ => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&octets(src));
            p.extend_from_slice(&octets(dst));
            p.extend_from_slice(&seg);
            p
        }
    }
}
