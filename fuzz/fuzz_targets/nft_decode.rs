//! Answers from the kernel's nf_tables netlink interface, as `lb` decodes them when it reads its table back.
//!
//! The kernel is trusted, but the table `lb` reads may hold chains, rules and elements another tool wrote, and a
//! decoding panic would stop `lb` from repairing the dataplane. So: no datagram panics the decoders, whether read
//! as a whole answer or message by message; cutting a datagram after its first message frames the rest into the
//! same messages; every message lies inside its datagram; and an error message reports a positive errno or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_lb::dataplane::nftables::netlink::{self, Message};

/// The table `lb` reads; a rule of another table must not be reported as one of its.
const TABLE: &str = "switchyard";
/// Bytes before a message's body, and before an nf_tables answer's attributes.
const NETLINK_HEADER_LEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

fuzz_target!(|datagram: &[u8]| {
    let framed: Vec<Message<'_>> = netlink::messages(datagram).collect();
    if let Some(first) = framed.first() {
        let next = (NETLINK_HEADER_LEN + first.body.len()).next_multiple_of(4);
        let rest: Vec<Message<'_>> = datagram.get(next..).map(|rest| netlink::messages(rest).collect()).unwrap_or_default();
        assert_eq!(rest.as_slice(), framed.get(1..).unwrap_or_default(), "cutting after the first message changed the rest");
    }
    let mut framed_bytes = 0;
    for message in &framed {
        framed_bytes += NETLINK_HEADER_LEN + message.body.len();
        if let Some(errno) = message.errno() {
            assert!(errno >= 0, "errno {errno} is reported negative");
        }
        decode_as_every_answer(message.body.get(NFGENMSG_LEN..).unwrap_or_default());
    }
    assert!(framed_bytes <= datagram.len(), "messages claim {framed_bytes} bytes of a {}-byte datagram", datagram.len());
    decode_as_every_answer(datagram);
});

/// Reads `answer` as each kind of answer `lb` asks for.
fn decode_as_every_answer(answer: &[u8]) {
    let _ = netlink::generation_of(answer);
    for element in netlink::set_elements_of(answer) {
        let sizes = [element.key.len(), element.key_end.map_or(0, |k| k.len()), element.data.map_or(0, |d| d.len())];
        assert!(sizes.iter().all(|size| *size <= answer.len()), "an element is bigger than its answer");
    }
    if let Some(rule) = netlink::rule_of(answer, TABLE) {
        assert!(netlink::rule_of(answer, "another").is_none(), "a rule is reported as one of two tables'");
        assert!(rule.chain.len() <= answer.len().saturating_mul(3), "a rule's chain outgrew its answer");
        assert!(rule.expressions.len() <= answer.len() / 4, "more expressions than the answer has room for");
    }
}
