//! Writing to nf_tables over netlink directly: the same transaction `nft -f -` would send, without `nft`.
//!
//! Why: `nft` rebuilds its cache from the kernel before it evaluates any command that refers to an existing
//! object, and with 10,000 VIPs that cache is 10,000 chains, so every `nft` run costs tens of milliseconds however
//! small the change, and loading a big table costs seconds of `nft` parsing. A batch encoded here costs neither.
//!
//! Only changes are written here (chains, VIP rules, map elements), as one nfnetlink batch, which the kernel
//! applies whole or not at all. Declarations (table, hook chains, maps) stay with `nft`: they are rare, and nft
//! records the `typeof` of a map in its user data, which `nft list` needs.
//!
//! The rule bytecode is the one nft 1.0.6 generates for the text [`super::ruleset`] writes (see
//! `nft --debug=netlink`), so `nft -j list` reads a rule written here exactly as one written by `nft`.
//!
//! Reading ([`NftSocket::list_table`]) dumps the table's chains, sets, elements and rules. A VIP's rule is intact
//! when its expressions, less the attributes the kernel reports at their defaults, are those `lb` would write
//! ([`expected_expressions`]): the same test `nft -j list` output gets, at a fraction of the cost. The socket only
//! moves bytes: framing and decoding the answers ([`messages`], [`rule_of`], [`set_elements_of`],
//! [`generation_of`]) are pure functions over what the kernel sent, which may include rules another tool wrote, so
//! they are fuzzed without a kernel (`fuzz/fuzz_targets/nft_decode.rs`). Messages and attributes are framed by
//! `netlink-packet-core`, as in the IPVS codec.

use super::ruleset::{Selector, SlotRange, VipRule};
use crate::dataplane::DataplaneError;
use crate::model::{DestinationKey, Protocol, ServiceKey};
use netlink_packet_core::{NetlinkBuffer, NlasIterator};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
/// Set on a dump answer when the ruleset changed while the kernel was producing the dump.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// Reads of the table retried when someone changes the ruleset meanwhile.
const READ_ATTEMPTS: usize = 5;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
/// Bytes before a message's body, an attribute's value, and an nf_tables message's attributes (`struct nfgenmsg`).
const NETLINK_HEADER_LEN: usize = 16;
const NLA_HEADER: usize = 4;
const NFGENMSG_LEN: usize = 4;

// Attribute numbers, from linux/netfilter/nf_tables.h.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;

/// Registers as nft allocates them: 128-bit `NFT_REG_1`/`NFT_REG_2`, and 32-bit ones from `NFT_REG32_00` = 8.
const REG_1: u32 = 1;
const REG_2: u32 = 2;

/// Most elements in one element message: the element list is one attribute, whose length is 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 400;
/// How long to wait for the kernel's verdict on a batch; loading a big table takes the kernel about a second.
const RECEIVE_TIMEOUT_SECONDS: i64 = 60;

/// One VIP's share of a DNAT map, as an element.
#[derive(Debug, Clone, Copy)]
pub struct SlotElement {
    /// The VIP.
    pub key: ServiceKey,
    /// Its slots and backend.
    pub range: SlotRange,
}

/// A batch of nf_tables messages under construction, each with the text of the `nft` command it stands for, so a
/// refusal names what was refused.
pub struct Batch {
    table: String,
    buffer: Vec<u8>,
    first_sequence: u32,
    next_sequence: u32,
    descriptions: Vec<String>,
    /// Where the last message starts, to ask the kernel to acknowledge it.
    last_message: Option<usize>,
}

impl Batch {
    /// A lone request (a dump), not a batch.
    fn request(table: &str, sequence: u32) -> Self {
        Self {
            table: table.to_owned(),
            buffer: Vec::with_capacity(256),
            first_sequence: sequence,
            next_sequence: sequence,
            descriptions: Vec::new(),
            last_message: None,
        }
    }

    /// An empty batch for `table` (family inet); `sequence` numbers its first message.
    pub fn new(table: &str, sequence: u32) -> Self {
        let mut batch = Self {
            table: table.to_owned(),
            buffer: Vec::with_capacity(4096),
            first_sequence: sequence,
            next_sequence: sequence,
            descriptions: Vec::new(),
            last_message: None,
        };
        let start = batch.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, "begin".to_owned());
        batch.end_message(start);
        batch.last_message = None;
        batch
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.last_message.is_none()
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Messages in the batch, begin and end included once finished.
    pub fn messages(&self) -> usize {
        self.descriptions.len()
    }

    /// Starts a message of netlink type `message_type` (batch begin and end are nfnetlink's own types; nf_tables
    /// messages carry the subsystem in the high byte).
    fn begin(&mut self, message_type: u16, flags: u16, family: u8, resource: u16, description: String) -> usize {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&0u32.to_ne_bytes());
        self.buffer.extend_from_slice(&message_type.to_ne_bytes());
        self.buffer.extend_from_slice(&flags.to_ne_bytes());
        self.buffer.extend_from_slice(&self.next_sequence.to_ne_bytes());
        self.buffer.extend_from_slice(&0u32.to_ne_bytes());
        self.buffer.extend_from_slice(&[family, 0]);
        self.buffer.extend_from_slice(&resource.to_be_bytes());
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.descriptions.push(description);
        self.last_message = Some(start);
        start
    }

    fn end_message(&mut self, start: usize) {
        let length = u32::try_from(self.buffer.len() - start).unwrap_or(u32::MAX);
        patch(&mut self.buffer, start, &length.to_ne_bytes());
    }

    fn message(&mut self, kind: u16, flags: u16, description: String) -> usize {
        self.begin((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags, NFPROTO_INET, 0, description)
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        let length = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buffer.extend_from_slice(&length.to_ne_bytes());
        self.buffer.extend_from_slice(&kind.to_ne_bytes());
        self.buffer.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buffer.len().is_multiple_of(4) {
            self.buffer.push(0);
        }
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attribute(kind, &bytes);
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.attribute(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Self)) {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0, 0]);
        self.buffer.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let length = u16::try_from(self.buffer.len() - start).unwrap_or(u16::MAX);
        patch(&mut self.buffer, start, &length.to_ne_bytes());
    }

    fn data_value(&mut self, kind: u16, value: &[u8]) {
        self.nest(kind, |b| b.attribute(NFTA_DATA_VALUE, value));
    }

    fn expression(&mut self, name: &str, body: impl FnOnce(&mut Self)) {
        self.nest(NFTA_LIST_ELEM, |b| {
            b.string(NFTA_EXPR_NAME, name);
            b.nest(NFTA_EXPR_DATA, body);
        });
    }

    /// `add chain inet <table> <chain>`.
    pub fn add_chain(&mut self, chain: &str) {
        self.chain_message("add chain", NFT_MSG_NEWCHAIN, NLM_F_CREATE, (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME), chain);
    }

    /// `delete chain inet <table> <chain>`.
    pub fn delete_chain(&mut self, chain: &str) {
        self.chain_message("delete chain", NFT_MSG_DELCHAIN, 0, (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME), chain);
    }

    /// `flush chain inet <table> <chain>`: a rule deletion that names only the chain.
    pub fn flush_chain(&mut self, chain: &str) {
        self.chain_message("flush chain", NFT_MSG_DELRULE, 0, (NFTA_RULE_TABLE, NFTA_RULE_CHAIN), chain);
    }

    /// A message whose only attributes are this batch's table and `chain`, under the attribute types of the
    /// message's kind (`(table, chain)`).
    fn chain_message(&mut self, verb: &str, kind: u16, flags: u16, attributes: (u16, u16), chain: &str) {
        let description = format!("{verb} inet {} {chain}", self.table);
        let start = self.message(kind, flags, description);
        let table = self.table.clone();
        self.string(attributes.0, &table);
        self.string(attributes.1, chain);
        self.end_message(start);
    }

    /// `add rule inet <table> <chain> <rule> comment "<comment>"`, as the bytecode nft makes of that text.
    pub(super) fn add_rule(&mut self, chain: &str, key: &ServiceKey, rule: &VipRule, comment: &str) {
        let description = format!("add rule inet {} {chain} ({key})", self.table);
        let start = self.message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, description);
        let table = self.table.clone();
        self.string(NFTA_RULE_TABLE, &table);
        self.string(NFTA_RULE_CHAIN, chain);
        self.nest(NFTA_RULE_EXPRESSIONS, |b| rule_expressions(b, key, rule));
        // nftnl user data: a comment TLV, type 0, NUL-terminated.
        let mut userdata = vec![0u8, u8::try_from(comment.len() + 1).unwrap_or(u8::MAX)];
        userdata.extend_from_slice(comment.as_bytes());
        userdata.push(0);
        self.attribute(NFTA_RULE_USERDATA, &userdata);
        self.end_message(start);
    }

    /// `add element` (`add: true`) or `delete element` of VIP slot ranges in the DNAT map `map`: ranges in an
    /// interval map, single slots in an exact-match one.
    pub fn slot_elements(&mut self, map: &str, elements: &[SlotElement], add: bool, interval: bool) {
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            let verb = if add { "add" } else { "delete" };
            let description = format!("{verb} element inet {} {map} ({} elements, from {})", self.table, chunk.len(), chunk.first().map(|e| e.key.to_string()).unwrap_or_default());
            let start = if add { self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, description) } else { self.message(NFT_MSG_DELSETELEM, 0, description) };
            let table = self.table.clone();
            self.string(NFTA_SET_ELEM_LIST_TABLE, &table);
            self.string(NFTA_SET_ELEM_LIST_SET, map);
            self.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for element in chunk {
                    b.nest(NFTA_LIST_ELEM, |b| {
                        b.data_value(NFTA_SET_ELEM_KEY, &slot_key(&element.key, element.range.first));
                        if interval {
                            b.data_value(NFTA_SET_ELEM_KEY_END, &slot_key(&element.key, element.range.last));
                        }
                        if add {
                            b.data_value(NFTA_SET_ELEM_DATA, &backend_value(&element.range.backend));
                        }
                    });
                }
            });
            self.end_message(start);
        }
    }

    /// `add element` of `VIP : goto <chain>` (`target` given) or `delete element` of VIPs in a services map.
    pub fn service_elements(&mut self, map: &str, elements: &[(ServiceKey, Option<String>)], add: bool) {
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            let verb = if add { "add" } else { "delete" };
            let description = format!("{verb} element inet {} {map} ({} elements, from {})", self.table, chunk.len(), chunk.first().map(|e| e.0.to_string()).unwrap_or_default());
            let start = if add { self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, description) } else { self.message(NFT_MSG_DELSETELEM, 0, description) };
            let table = self.table.clone();
            self.string(NFTA_SET_ELEM_LIST_TABLE, &table);
            self.string(NFTA_SET_ELEM_LIST_SET, map);
            self.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for (key, target) in chunk {
                    b.nest(NFTA_LIST_ELEM, |b| {
                        b.data_value(NFTA_SET_ELEM_KEY, &service_key(key));
                        if let Some(target) = target {
                            b.nest(NFTA_SET_ELEM_DATA, |b| {
                                b.nest(NFTA_DATA_VERDICT, |b| {
                                    b.attribute(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                                    b.string(NFTA_VERDICT_CHAIN, target);
                                });
                            });
                        }
                    });
                }
            });
            self.end_message(start);
        }
    }

    /// Closes the batch: the last change asks for an acknowledgement, which the kernel sends only once the whole
    /// batch is committed or refused.
    fn finish(&mut self) -> u32 {
        if let Some(last) = self.last_message
            && let Some(flags) = read::<2>(&self.buffer, last + 6)
        {
            patch(&mut self.buffer, last + 6, &(u16::from_ne_bytes(flags) | NLM_F_ACK).to_ne_bytes());
        }
        let acknowledged = self.next_sequence.wrapping_sub(1);
        let start = self.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, "end".to_owned());
        self.end_message(start);
        acknowledged
    }

    fn describe(&self, sequence: u32) -> &str {
        let index = sequence.wrapping_sub(self.first_sequence) as usize;
        self.descriptions.get(index).map_or("the nftables transaction", String::as_str)
    }
}

/// Overwrites `bytes.len()` bytes of `buffer` at `at`.
fn patch(buffer: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buffer.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

/// `N` bytes of `buffer` at `at`, if it has them.
fn read<const N: usize>(buffer: &[u8], at: usize) -> Option<[u8; N]> {
    buffer.get(at..at + N)?.try_into().ok()
}

fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A concatenation field: its bytes, padded to 32 bits.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// `VIP . port . slot`; the slot is big-endian, as the rule's `byteorder` leaves it.
fn slot_key(key: &ServiceKey, slot: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    field(&mut out, &address_bytes(key.address));
    field(&mut out, &key.port.to_be_bytes());
    field(&mut out, &u32::try_from(slot).unwrap_or(u32::MAX).to_be_bytes());
    out
}

/// `backend . port`.
fn backend_value(backend: &DestinationKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    field(&mut out, &address_bytes(backend.address));
    field(&mut out, &backend.port.to_be_bytes());
    out
}

/// `VIP . protocol . port`.
fn service_key(key: &ServiceKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    field(&mut out, &address_bytes(key.address));
    field(&mut out, &[key.protocol.number()]);
    field(&mut out, &key.port.to_be_bytes());
    out
}

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_HASH_SREG: u16 = 1;
const NFTA_HASH_DREG: u16 = 2;
const NFTA_HASH_LEN: u16 = 3;
const NFTA_HASH_MODULUS: u16 = 4;
const NFTA_HASH_SEED: u16 = 5;
const NFTA_HASH_TYPE: u16 = 7;
const NFTA_BYTEORDER_SREG: u16 = 1;
const NFTA_BYTEORDER_DREG: u16 = 2;
const NFTA_BYTEORDER_OP: u16 = 3;
const NFTA_BYTEORDER_LEN: u16 = 4;
const NFTA_BYTEORDER_SIZE: u16 = 5;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;

fn meta_load(b: &mut Batch, key: u32, register: u32) {
    b.expression("meta", |b| {
        b.u32(NFTA_META_KEY, key);
        b.u32(NFTA_META_DREG, register);
    });
}

fn compare_equal(b: &mut Batch, register: u32, value: &[u8]) {
    b.expression("cmp", |b| {
        b.u32(NFTA_CMP_SREG, register);
        b.u32(NFTA_CMP_OP, 0);
        b.data_value(NFTA_CMP_DATA, value);
    });
}

fn payload(b: &mut Batch, base: u32, offset: u32, length: u32, register: u32) {
    b.expression("payload", |b| {
        b.u32(NFTA_PAYLOAD_DREG, register);
        b.u32(NFTA_PAYLOAD_BASE, base);
        b.u32(NFTA_PAYLOAD_OFFSET, offset);
        b.u32(NFTA_PAYLOAD_LEN, length);
    });
}

/// The expressions of a VIP's rule, register for register as nft 1.0.6 builds them.
fn rule_expressions(b: &mut Batch, key: &ServiceKey, rule: &VipRule) {
    let protocol = match key.protocol {
        Protocol::Tcp => 6u8,
        Protocol::Udp => 17u8,
    };
    meta_load(b, NFT_META_L4PROTO, REG_1);
    compare_equal(b, REG_1, &[protocol]);
    let VipRule::Dnat { mark, selector, slots, map } = rule else {
        b.expression("reject", |b| match key.protocol {
            Protocol::Tcp => b.u32(NFTA_REJECT_TYPE, NFT_REJECT_TCP_RST),
            Protocol::Udp => {
                b.u32(NFTA_REJECT_TYPE, NFT_REJECT_ICMPX_UNREACH);
                b.attribute(NFTA_REJECT_ICMP_CODE, &[NFT_REJECT_ICMPX_PORT_UNREACH]);
            }
        });
        return;
    };
    if let Some(mark) = mark {
        meta_load(b, NFT_META_MARK, REG_1);
        b.expression("bitwise", |b| {
            b.u32(NFTA_BITWISE_SREG, REG_1);
            b.u32(NFTA_BITWISE_DREG, REG_1);
            b.u32(NFTA_BITWISE_LEN, 4);
            b.data_value(NFTA_BITWISE_MASK, &(!mark).to_ne_bytes());
            b.data_value(NFTA_BITWISE_XOR, &mark.to_ne_bytes());
        });
        b.expression("meta", |b| {
            b.u32(NFTA_META_KEY, NFT_META_MARK);
            b.u32(NFTA_META_SREG, REG_1);
        });
    }
    // Registers of `daddr . dport . slot` and of the client address the hash reads: a 32-bit register is 8 + n.
    let (nfproto, address_length, daddr_offset, saddr_offset, port_register, slot_register, saddr_register) = if key.address.is_ipv4() {
        (NFPROTO_IPV4, 4, 16, 12, 9, 10, 15)
    } else {
        (NFPROTO_IPV6, 16, 24, 8, REG_2, 13, 18)
    };
    meta_load(b, NFT_META_NFPROTO, REG_1);
    compare_equal(b, REG_1, &[u8::try_from(nfproto).unwrap_or(0)]);
    payload(b, NFT_PAYLOAD_NETWORK_HEADER, daddr_offset, address_length, REG_1);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, port_register);
    let modulus = u32::try_from(*slots).unwrap_or(u32::MAX);
    match selector {
        Selector::Rotate => b.expression("numgen", |b| {
            b.u32(NFTA_NG_DREG, slot_register);
            b.u32(NFTA_NG_MODULUS, modulus);
            b.u32(NFTA_NG_TYPE, 0);
        }),
        Selector::HashClient => {
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, saddr_offset, address_length, saddr_register);
            b.expression("hash", |b| {
                b.u32(NFTA_HASH_SREG, saddr_register);
                b.u32(NFTA_HASH_DREG, slot_register);
                b.u32(NFTA_HASH_LEN, address_length);
                b.u32(NFTA_HASH_MODULUS, modulus);
                b.u32(NFTA_HASH_SEED, u32::try_from(super::ruleset::HASH_SEED).unwrap_or(0));
                b.u32(NFTA_HASH_TYPE, 0);
            });
        }
    }
    b.expression("byteorder", |b| {
        b.u32(NFTA_BYTEORDER_SREG, slot_register);
        b.u32(NFTA_BYTEORDER_DREG, slot_register);
        b.u32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
        b.u32(NFTA_BYTEORDER_LEN, 4);
        b.u32(NFTA_BYTEORDER_SIZE, 4);
    });
    b.expression("lookup", |b| {
        b.string(NFTA_LOOKUP_SET, map);
        b.u32(NFTA_LOOKUP_SREG, REG_1);
        b.u32(NFTA_LOOKUP_DREG, REG_1);
    });
    b.expression("nat", |b| {
        b.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        b.u32(NFTA_NAT_FAMILY, nfproto);
        b.u32(NFTA_NAT_REG_ADDR_MIN, REG_1);
        b.u32(NFTA_NAT_REG_PROTO_MIN, port_register);
    });
}

/// A netfilter netlink socket.
pub struct NftSocket {
    socket: Socket,
    sequence: u32,
    incoming: Vec<u8>,
}

impl std::fmt::Debug for NftSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftSocket").field("sequence", &self.sequence).finish_non_exhaustive()
    }
}

impl NftSocket {
    /// Opens the socket.
    pub fn open() -> Result<Self, DataplaneError> {
        let open = |err: std::io::Error| DataplaneError::Kernel {
            operation: "open a netfilter netlink socket".to_owned(),
            detail: err.to_string(),
            retryable: false,
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(open)?;
        socket.bind_auto().map_err(open)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(open)?;
        socket.set_cap_ack(true).map_err(open)?;
        // Errors of a big batch must not overflow the buffer; root may go past rmem_max.
        if setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20)).is_err() {
            socket.set_rx_buf_sz(8 << 20).map_err(open)?;
        }
        setsockopt(&socket, sockopt::ReceiveTimeout, &TimeVal::new(RECEIVE_TIMEOUT_SECONDS, 0)).map_err(|e| open(e.into()))?;
        Ok(Self { socket, sequence: std::process::id().wrapping_mul(65_536), incoming: vec![0; 1 << 20] })
    }

    /// A batch for `table` numbered after the previous ones.
    pub fn batch(&mut self, table: &str) -> Batch {
        Batch::new(table, self.sequence)
    }

    /// Sends the batch and waits for the kernel's verdict: the whole batch applied, or none of it.
    pub fn commit(&mut self, mut batch: Batch) -> Result<(), DataplaneError> {
        if batch.is_empty() {
            return Ok(());
        }
        let acknowledged = batch.finish();
        self.sequence = batch.next_sequence;
        let io = |what: &str, err: std::io::Error| DataplaneError::Kernel {
            operation: format!("{what} an nftables batch of {} messages", batch.messages()),
            detail: err.to_string(),
            retryable: true,
        };
        // The kernel takes a batch only whole, in one datagram, which must fit the send buffer.
        let wanted = i32::try_from(batch.buffer.len() + (1 << 16)).unwrap_or(i32::MAX) / 2 + 1;
        if batch.buffer.len() > 200_000 {
            setsockopt(&self.socket, sockopt::SndBufForce, &usize::try_from(wanted).unwrap_or(usize::MAX)).map_err(|e| io("size the socket for", e.into()))?;
        }
        let sent = self.socket.send(&batch.buffer, 0).map_err(|e| io("send", e))?;
        if sent != batch.buffer.len() {
            return Err(io("send", std::io::Error::other(format!("sent {sent} of {} bytes", batch.buffer.len()))));
        }
        loop {
            let length = {
                let mut buffer = &mut self.incoming[..];
                self.socket.recv(&mut buffer, 0).map_err(|e| io("await the verdict on", e))?
            };
            let received = self.incoming.get(..length.min(self.incoming.len())).unwrap_or_default();
            for message in messages(received) {
                let ours = message.sequence.wrapping_sub(batch.first_sequence) <= acknowledged.wrapping_sub(batch.first_sequence);
                match message.errno() {
                    Some(errno) if ours && errno != 0 => {
                        return Err(DataplaneError::Kernel {
                            operation: batch.describe(message.sequence).to_owned(),
                            detail: std::io::Error::from_raw_os_error(errno).to_string(),
                            retryable: true,
                        });
                    }
                    Some(_) if ours && message.sequence == acknowledged => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

/// One expression of a rule as the kernel holds it: its name and its attributes (nested ones as raw bytes), in
/// attribute order, without those the kernel fills in with their defaults. Comparable with
/// [`expected_expressions`].
pub type Expression = (String, Vec<(u16, Vec<u8>)>);

/// A rule read back.
#[derive(Debug, Clone)]
pub struct RawRule {
    /// Its chain.
    pub chain: String,
    /// Its comment (nftnl user data), if any.
    pub comment: Option<String>,
    /// Its expressions.
    pub expressions: Vec<Expression>,
}

/// A set or map element read back.
#[derive(Debug, Clone, Default)]
pub struct RawElement {
    /// Key bytes (fields padded to 32 bits).
    pub key: Vec<u8>,
    /// End of a range key, if the element is a range.
    pub key_end: Option<Vec<u8>>,
    /// Data bytes, in a map of values.
    pub data: Option<Vec<u8>>,
    /// The chain of a `goto` verdict, in a verdict map.
    pub goto: Option<String>,
}

/// Everything in one table that a listing needs.
#[derive(Debug, Clone, Default)]
pub struct RawTable {
    /// Chain names.
    pub chains: BTreeSet<String>,
    /// Elements of every set and map, by name.
    pub sets: BTreeMap<String, Vec<RawElement>>,
    /// Rules, in chain and rule order.
    pub rules: Vec<RawRule>,
}

/// The attributes in `data`: type (flags stripped) and payload. A malformed attribute ends the list: what follows
/// it cannot be framed.
fn attributes(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(data).map_while(Result::ok).filter_map(|nla| {
        let (kind, length) = (nla.kind(), usize::from(nla.length()));
        nla.into_inner().get(NLA_HEADER..length).map(|value| (kind, value))
    })
}

fn attribute(data: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(data).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

fn string_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn u32_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Reads a list of `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`, dropping the attributes the kernel
/// reports at their default values (so a rule read back compares equal to the one written).
fn expressions(data: &[u8]) -> Vec<Expression> {
    attributes(data)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .map(|(_, element)| {
            let name = attribute(element, NFTA_EXPR_NAME).map(string_of).unwrap_or_default();
            let mut fields: Vec<(u16, Vec<u8>)> = attribute(element, NFTA_EXPR_DATA)
                .into_iter()
                .flat_map(attributes)
                .map(|(kind, value)| (kind, value.to_vec()))
                .collect();
            let get = |fields: &[(u16, Vec<u8>)], kind: u16| fields.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone());
            let zero = 0u32.to_be_bytes().to_vec();
            let defaults: Vec<(u16, Vec<u8>)> = match name.as_str() {
                // bitwise OP: mask and xor; numgen and hash OFFSET; lookup FLAGS.
                "bitwise" => vec![(6, zero)],
                "numgen" => vec![(4, zero)],
                "hash" => vec![(6, zero)],
                "lookup" => vec![(5, zero)],
                // nat: a range of one address and port, and the flags the kernel derives from the registers.
                "nat" => [(4, get(&fields, NFTA_NAT_REG_ADDR_MIN)), (6, get(&fields, NFTA_NAT_REG_PROTO_MIN))]
                    .into_iter()
                    .filter_map(|(kind, value)| Some((kind, value?)))
                    .chain([(7, 3u32.to_be_bytes().to_vec())])
                    .collect(),
                _ => Vec::new(),
            };
            fields.retain(|field| !defaults.contains(field));
            fields.sort();
            (name, fields)
        })
        .collect()
}

/// The expressions of the rule `lb` writes, as [`RawRule::expressions`] would read them back.
pub(super) fn expected_expressions(key: &ServiceKey, rule: &VipRule) -> Vec<Expression> {
    let mut scratch = Batch::request("", 0);
    rule_expressions(&mut scratch, key, rule);
    expressions(&scratch.buffer)
}

/// One netlink message of an answer from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Message type: `NLMSG_ERROR`, `NLMSG_DONE`, or the subsystem and nf_tables message.
    pub kind: u16,
    /// Netlink flags (`NLM_F_DUMP_INTR`, ...).
    pub flags: u16,
    /// The sequence number of the request it answers.
    pub sequence: u32,
    /// What follows the netlink header.
    pub body: &'a [u8],
}

impl Message<'_> {
    /// What an `NLMSG_ERROR` message reports: 0 acknowledges the request, anything else is the (positive) errno
    /// of its refusal. The kernel sends the errno negated; a message too short to carry one, or carrying a positive
    /// code, reports `EPROTO`. `None` for any other message.
    pub fn errno(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR).then(|| {
            read::<4>(self.body, 0)
                .map(i32::from_ne_bytes)
                .filter(|code| *code <= 0)
                .and_then(i32::checked_neg)
                .unwrap_or(nix::libc::EPROTO)
        })
    }
}

/// The messages of a datagram, in order. A malformed message ends the walk: what follows it cannot be framed.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let framed = NetlinkBuffer::new_checked(rest).ok()?;
        let length = usize::try_from(framed.length()).ok()?;
        let message = Message {
            kind: framed.message_type(),
            flags: framed.flags(),
            sequence: framed.sequence_number(),
            body: rest.get(NETLINK_HEADER_LEN..length)?,
        };
        // Messages start on 4-byte boundaries; the last one may end the datagram unpadded.
        rest = rest.get(length.next_multiple_of(4)..).unwrap_or_default();
        Some(message)
    })
}

/// The ruleset generation an `NFT_MSG_GETGEN` answer reports.
pub fn generation_of(answer: &[u8]) -> Option<u32> {
    attribute(answer, NFTA_GEN_ID).and_then(u32_of)
}

/// The elements one `NFT_MSG_GETSETELEM` answer carries.
pub fn set_elements_of(answer: &[u8]) -> Vec<RawElement> {
    let Some(list) = attribute(answer, NFTA_SET_ELEM_LIST_ELEMENTS) else { return Vec::new() };
    attributes(list)
        .map(|(_, element)| {
            let value = |kind: u16| attribute(element, kind).and_then(|nested| attribute(nested, NFTA_DATA_VALUE)).map(<[u8]>::to_vec);
            let verdict = attribute(element, NFTA_SET_ELEM_DATA).and_then(|data| attribute(data, NFTA_DATA_VERDICT));
            let goto = verdict
                .filter(|v| attribute(v, NFTA_VERDICT_CODE).and_then(u32_of) == Some(NFT_GOTO.cast_unsigned()))
                .and_then(|v| attribute(v, NFTA_VERDICT_CHAIN))
                .map(string_of);
            RawElement { key: value(NFTA_SET_ELEM_KEY).unwrap_or_default(), key_end: value(NFTA_SET_ELEM_KEY_END), data: value(NFTA_SET_ELEM_DATA), goto }
        })
        .collect()
}

/// The rule an `NFT_MSG_GETRULE` answer carries, if it is one of `table`'s.
pub fn rule_of(answer: &[u8], table: &str) -> Option<RawRule> {
    if attribute(answer, NFTA_RULE_TABLE).map(string_of).as_deref() != Some(table) {
        return None;
    }
    let comment = attribute(answer, NFTA_RULE_USERDATA).and_then(|userdata| {
        // nftnl user data: TLVs of type, length, value; the comment is type 0.
        let mut rest = userdata;
        while let [kind, length, tail @ ..] = rest {
            let value = tail.get(..usize::from(*length))?;
            if *kind == 0 {
                return Some(string_of(value));
            }
            rest = tail.get(usize::from(*length)..)?;
        }
        None
    });
    Some(RawRule {
        chain: attribute(answer, NFTA_RULE_CHAIN).map(string_of).unwrap_or_default(),
        comment,
        expressions: attribute(answer, NFTA_RULE_EXPRESSIONS).map(expressions).unwrap_or_default(),
    })
}

impl NftSocket {
    /// Sends one dump request and collects the payload (after the nfgenmsg header) of every answer.
    fn dump(&mut self, kind: u16, build: impl FnOnce(&mut Batch)) -> Result<Vec<Vec<u8>>, DataplaneError> {
        self.ask(kind, NLM_F_DUMP, build)
    }

    /// Sends one request and collects the payload (after the nfgenmsg header) of every answer; a dump that the
    /// kernel flags as interrupted is an error [`NftSocket::list_table`] retries.
    fn ask(&mut self, kind: u16, flags: u16, build: impl FnOnce(&mut Batch)) -> Result<Vec<Vec<u8>>, DataplaneError> {
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = Batch::request("", sequence);
        let start = request.message(kind, flags | NLM_F_ACK, String::new());
        build(&mut request);
        request.end_message(start);
        let io = |err: std::io::Error| DataplaneError::Kernel { operation: "list the nftables table".to_owned(), detail: err.to_string(), retryable: true };
        self.socket.send(&request.buffer, 0).map_err(io)?;
        let mut answers = Vec::new();
        let mut interrupted = false;
        loop {
            let length = {
                let mut buffer = &mut self.incoming[..];
                self.socket.recv(&mut buffer, nix::libc::MSG_TRUNC).map_err(io)?
            };
            if length > self.incoming.len() {
                return Err(io(std::io::Error::other("a dump message did not fit the receive buffer")));
            }
            let received = self.incoming.get(..length).unwrap_or_default();
            for message in messages(received).filter(|message| message.sequence == sequence) {
                interrupted |= message.flags & NLM_F_DUMP_INTR != 0;
                let errno = match (message.kind, message.errno()) {
                    (NLMSG_DONE, _) => 0,
                    (_, Some(errno)) => errno,
                    _ => {
                        answers.push(message.body.get(NFGENMSG_LEN..).unwrap_or_default().to_vec());
                        continue;
                    }
                };
                if errno != 0 {
                    return Err(io(std::io::Error::from_raw_os_error(errno)));
                }
                if interrupted {
                    return Err(DataplaneError::Kernel {
                        operation: "list the nftables table".to_owned(),
                        detail: "the ruleset changed during the dump".to_owned(),
                        retryable: true,
                    });
                }
                // A dump ends with DONE; a plain request with its acknowledgement, but a dump may be acknowledged too.
                if message.kind != NLMSG_ERROR || flags & NLM_F_DUMP == 0 {
                    return Ok(answers);
                }
            }
        }
    }

    /// The ruleset's generation: it changes with every committed transaction.
    fn generation(&mut self) -> Result<Option<u32>, DataplaneError> {
        let answers = self.ask(NFT_MSG_GETGEN, 0, |_| {})?;
        Ok(answers.iter().find_map(|answer| generation_of(answer)))
    }

    /// Reads `table` (family inet) over netlink; `None` if it does not exist. The table is read in several dumps,
    /// so the read is repeated if the ruleset's generation changed meanwhile: a listing is one consistent state.
    pub fn list_table(&mut self, table: &str) -> Result<Option<RawTable>, DataplaneError> {
        let mut last_error = None;
        for _ in 0..READ_ATTEMPTS {
            let before = self.generation()?;
            let read = self.read_table(table);
            match read {
                Ok(read) if before.is_some() && self.generation()? == before => return Ok(read),
                Ok(_) => {}
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| DataplaneError::Kernel {
            operation: "list the nftables table".to_owned(),
            detail: format!("the ruleset changed during each of {READ_ATTEMPTS} reads"),
            retryable: true,
        }))
    }

    fn read_table(&mut self, table: &str) -> Result<Option<RawTable>, DataplaneError> {
        let tables = self.dump(NFT_MSG_GETTABLE, |_| {})?;
        if !tables.iter().any(|t| attribute(t, NFTA_TABLE_NAME).map(string_of).as_deref() == Some(table)) {
            return Ok(None);
        }
        let mut raw = RawTable::default();
        for chain in self.dump(NFT_MSG_GETCHAIN, |b| b.string(NFTA_CHAIN_TABLE, table))? {
            if attribute(&chain, NFTA_CHAIN_TABLE).map(string_of).as_deref() == Some(table) {
                raw.chains.extend(attribute(&chain, NFTA_CHAIN_NAME).map(string_of));
            }
        }
        let mut sets = Vec::new();
        for set in self.dump(NFT_MSG_GETSET, |b| b.string(NFTA_SET_TABLE, table))? {
            if attribute(&set, NFTA_SET_TABLE).map(string_of).as_deref() == Some(table) {
                sets.extend(attribute(&set, NFTA_SET_NAME).map(string_of));
            }
        }
        for set in sets {
            let mut elements = Vec::new();
            for answer in self.dump(NFT_MSG_GETSETELEM, |b| {
                b.string(NFTA_SET_ELEM_LIST_TABLE, table);
                b.string(NFTA_SET_ELEM_LIST_SET, &set);
            })? {
                elements.extend(set_elements_of(&answer));
            }
            raw.sets.insert(set, elements);
        }
        for rule in self.dump(NFT_MSG_GETRULE, |b| b.string(NFTA_RULE_TABLE, table))? {
            raw.rules.extend(rule_of(&rule, table));
        }
        Ok(Some(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `(expression, [(attribute, hex payload)])` as a kernel dump carries a rule's expressions.
    fn dumped(expressions: &[(&str, &[(u16, &str)])]) -> Vec<u8> {
        let mut batch = Batch::request("", 0);
        for (name, fields) in expressions {
            batch.expression(name, |b| {
                for (kind, value) in *fields {
                    let bytes: Vec<u8> = (0..value.len()).step_by(2).map(|i| u8::from_str_radix(&value[i..i + 2], 16).unwrap()).collect();
                    b.attribute(*kind, &bytes);
                }
            });
        }
        batch.buffer
    }

    #[test]
    fn a_rule_read_back_compares_equal_to_the_rule_written() {
        // What Linux 6.18 dumps for a rule nft 1.0.6 wrote from
        // `meta l4proto udp meta mark set meta mark | 0x00535900 dnat ip to ip daddr . udp dport . numgen inc mod 6
        // map @backends4_udp_206`: the kernel adds bitwise OP, numgen OFFSET, lookup FLAGS and the nat range's max
        // registers and flags.
        let dump = dumped(&[
            ("meta", &[(2, "00000010"), (1, "00000001")]),
            ("cmp", &[(1, "00000001"), (2, "00000000"), (3, "0500010011000000")]),
            ("meta", &[(2, "00000003"), (1, "00000001")]),
            ("bitwise", &[(1, "00000001"), (2, "00000001"), (3, "00000004"), (6, "00000000"), (4, "08000100ffa6acff"), (5, "0800010000595300")]),
            ("meta", &[(2, "00000003"), (3, "00000001")]),
            ("meta", &[(2, "0000000f"), (1, "00000001")]),
            ("cmp", &[(1, "00000001"), (2, "00000000"), (3, "0500010002000000")]),
            ("payload", &[(1, "00000001"), (2, "00000001"), (3, "00000010"), (4, "00000004")]),
            ("payload", &[(1, "00000009"), (2, "00000002"), (3, "00000002"), (4, "00000002")]),
            ("numgen", &[(1, "0000000a"), (2, "00000006"), (3, "00000000"), (4, "00000000")]),
            ("byteorder", &[(1, "0000000a"), (2, "0000000a"), (3, "00000001"), (4, "00000004"), (5, "00000004")]),
            ("lookup", &[(1, "6261636b656e6473345f7564705f32303600"), (2, "00000001"), (3, "00000001"), (5, "00000000")]),
            ("nat", &[(1, "00000001"), (2, "00000002"), (3, "00000001"), (4, "00000001"), (5, "00000009"), (6, "00000009"), (7, "00000003")]),
        ]);
        let key = ServiceKey { address: "198.18.16.2".parse().unwrap(), port: 80, protocol: Protocol::Udp };
        let rule = VipRule::Dnat { mark: Some(0x0053_5900), selector: Selector::Rotate, slots: 6, map: "backends4_udp_206".to_owned() };
        assert_eq!(expressions(&dump), expected_expressions(&key, &rule));
        let other = VipRule::Dnat { mark: Some(0x0053_5900), selector: Selector::Rotate, slots: 7, map: "backends4_udp_206".to_owned() };
        assert_ne!(expressions(&dump), expected_expressions(&key, &other));
        // `persistent` sets another nat flag: not lb's rule.
        let mut flagged = dump;
        let at = flagged.len() - 4;
        flagged[at..].copy_from_slice(&7u32.to_be_bytes());
        assert_ne!(expressions(&flagged), expected_expressions(&key, &rule));
    }

    /// The bodies (after nfgenmsg) of a batch's messages, as a dump would carry the same objects.
    fn bodies(batch: &Batch) -> Vec<Vec<u8>> {
        messages(&batch.buffer).map(|message| message.body.get(NFGENMSG_LEN..).unwrap_or_default().to_vec()).collect()
    }

    #[test]
    fn rules_and_elements_read_back_as_written() {
        let key = ServiceKey { address: "198.18.16.2".parse().unwrap(), port: 80, protocol: Protocol::Udp };
        let rule = VipRule::Dnat { mark: None, selector: Selector::Rotate, slots: 6, map: "backends4_udp".to_owned() };
        let backend = DestinationKey { address: "198.19.200.1".parse().unwrap(), port: 10000 };
        let range = SlotRange { first: 2, last: 5, backend };
        let mut batch = Batch::new("switchyard", 1);
        batch.add_rule("svc4", &key, &rule, "vip 198.18.16.2");
        batch.service_elements("services4", &[(key, Some("svc4".to_owned())), (key, None)], true);
        batch.slot_elements("backends4_udp", &[SlotElement { key, range }], true, true);
        let single = SlotRange { first: 1, last: 1, backend };
        batch.slot_elements("unweighted4_udp", &[SlotElement { key, range: single }], true, false);
        // Batch begin, the four changes, and nothing else yet (the batch is not finished).
        let bodies = bodies(&batch);
        assert_eq!(bodies.len(), 5);
        let read = rule_of(&bodies[1], "switchyard").unwrap();
        assert_eq!((read.chain.as_str(), read.comment.as_deref()), ("svc4", Some("vip 198.18.16.2")));
        assert_eq!(read.expressions, expected_expressions(&key, &rule));
        assert!(rule_of(&bodies[1], "other").is_none());
        let services = set_elements_of(&bodies[2]);
        assert_eq!(services.len(), 2);
        assert_eq!((services[0].key.clone(), services[0].goto.as_deref()), (service_key(&key), Some("svc4")));
        assert_eq!(services[1].goto, None);
        let slots = set_elements_of(&bodies[3]);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].key, slot_key(&key, 2));
        assert_eq!(slots[0].key_end, Some(slot_key(&key, 5)));
        assert_eq!(slots[0].data, Some(backend_value(&backend)));
        // An exact-match map's element is its one slot: no range end.
        let singles = set_elements_of(&bodies[4]);
        assert_eq!(singles.len(), 1);
        assert_eq!((singles[0].key.clone(), singles[0].key_end.clone()), (slot_key(&key, 1), None));
        assert_eq!(singles[0].data, Some(backend_value(&backend)));
    }

    /// A netlink message of `kind` for `sequence` with `body`, padded to 4 bytes.
    fn message(kind: u16, sequence: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = u32::try_from(NETLINK_HEADER_LEN + body.len()).unwrap().to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(body);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    #[test]
    fn an_answer_frames_into_messages_and_errors_read_as_errnos() {
        let mut datagram = message(NLMSG_ERROR, 7, &(-1i32).to_ne_bytes());
        datagram.extend(message(NLMSG_ERROR, 8, &0i32.to_ne_bytes()));
        datagram.extend(message(NLMSG_ERROR, 9, &i32::MIN.to_ne_bytes()));
        datagram.extend(message(NLMSG_ERROR, 10, &5i32.to_ne_bytes()));
        datagram.extend(message(NLMSG_ERROR, 11, &[1]));
        datagram.extend(message(NLMSG_DONE, 12, &[]));
        let framed: Vec<_> = messages(&datagram).map(|m| (m.sequence, m.errno())).collect();
        let eproto = Some(nix::libc::EPROTO);
        assert_eq!(framed, [(7, Some(1)), (8, Some(0)), (9, eproto), (10, eproto), (11, eproto), (12, None)]);
        // A message longer than what is left ends the walk, and nothing before it is lost.
        let mut truncated = message(NLMSG_DONE, 1, &[]);
        truncated.extend(&message(NLMSG_DONE, 2, &[0; 8])[..20]);
        assert_eq!(messages(&truncated).map(|m| m.sequence).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn nf_tables_types_do_not_collide_with_nfnetlink_batch_types() {
        // NFT_MSG_GETGEN (16) is numerically NFNL_MSG_BATCH_BEGIN (0x10): only the subsystem byte tells them apart.
        let mut request = Batch::request("", 7);
        let start = request.message(NFT_MSG_GETGEN, 0, String::new());
        request.end_message(start);
        assert_eq!(read::<2>(&request.buffer, 4).map(u16::from_ne_bytes), Some((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN));
    }

    #[test]
    fn keys_are_fields_padded_to_32_bits() {
        let key = ServiceKey { address: "198.18.16.1".parse().unwrap(), port: 80, protocol: Protocol::Tcp };
        assert_eq!(slot_key(&key, 10), [198, 18, 16, 1, 0, 80, 0, 0, 0, 0, 0, 10]);
        assert_eq!(service_key(&key), [198, 18, 16, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        let backend = DestinationKey { address: "198.19.200.1".parse().unwrap(), port: 10000 };
        assert_eq!(backend_value(&backend), [198, 19, 200, 1, 0x27, 0x10, 0, 0]);
    }

    #[test]
    fn a_batch_is_framed_and_its_last_change_acknowledged() {
        let mut batch = Batch::new("switchyard", 100);
        assert!(batch.is_empty());
        batch.add_chain("svc4_tcp_198.18.16.1_80");
        batch.flush_chain("svc4_tcp_198.18.16.1_80");
        let acknowledged = batch.finish();
        assert_eq!(acknowledged, 102);
        assert_eq!(batch.messages(), 4);
        let mut offset = 0;
        let mut kinds = Vec::new();
        while offset < batch.buffer.len() {
            let length = u32::from_ne_bytes(batch.buffer[offset..offset + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(batch.buffer[offset + 4..offset + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(batch.buffer[offset + 6..offset + 8].try_into().unwrap());
            kinds.push((kind, flags & NLM_F_ACK != 0));
            assert_eq!(length % 4, 0);
            offset += length;
        }
        assert_eq!(offset, batch.buffer.len());
        let chain = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;
        let flush = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE;
        assert_eq!(kinds, [(NFNL_MSG_BATCH_BEGIN, false), (chain, false), (flush, true), (NFNL_MSG_BATCH_END, false)]);
    }
}
