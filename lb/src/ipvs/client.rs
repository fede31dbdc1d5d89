//! The socket edge of the IPVS client: one generic netlink socket, requests out, answers in.
//!
//! Changes are pipelined: up to [`BATCH`] requests go to the kernel in one datagram, each asking for its own
//! acknowledgement, and the answers are matched back by sequence number. The kernel handles every request of a
//! datagram in order and answers each, so a failure of one does not stop the others, and programming ten thousand
//! objects costs a few dozen system calls rather than ten thousand round trips. The batch is bounded so that the
//! acknowledgements always fit the socket's receive buffer; a lost acknowledgement would otherwise look like a
//! hang. Everything the client sends is counted, so a caller can prove how much an update cost.

use super::codec::{self, Change, Reply, ReplyBody};
use super::error::{IpvsError, Object, Operation};
use super::objects::{DestinationEntry, ServiceEntry, ServiceKey};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::collections::HashMap;
use std::io;

/// Most requests in flight at once. Each acknowledgement takes well under 1 KiB of receive buffer.
pub const BATCH: usize = 128;
/// Receive buffer asked for (a C `int`); the kernel caps it at `net.core.rmem_max`, which still holds a full batch.
const RECEIVE_BUFFER: i32 = 1 << 20;
/// Largest datagram the kernel sends for a dump (it fills at most 32 KiB per read).
const DATAGRAM: usize = 64 * 1024;
/// How long to wait for the kernel before calling the socket stuck. The kernel answers generic netlink
/// synchronously, so this only fires if answers were lost.
const RECEIVE_TIMEOUT_SECONDS: i64 = 5;
const ENOENT: i32 = 2;
/// `MSG_TRUNC` on receive: the call returns the datagram's real length, so a truncated read is detected rather
/// than misparsed.
const REPORT_TRUE_LENGTH: i32 = nix::libc::MSG_TRUNC;

/// A connection to the kernel's IPVS over generic netlink. Blocking; use it from one thread.
pub struct IpvsClient {
    socket: Socket,
    family: u16,
    sequence: u32,
    outgoing: Vec<u8>,
    incoming: Vec<u8>,
    requests_sent: u64,
}

/// A change the kernel refused, by its position in the list given to [`IpvsClient::apply`].
#[derive(Debug)]
pub struct Refusal {
    /// Index of the change.
    pub index: usize,
    /// Why it was refused.
    pub error: IpvsError,
}

impl IpvsClient {
    /// Opens a generic netlink socket and resolves the IPVS family.
    ///
    /// Fails with [`IpvsError::Unavailable`] when the kernel has no IPVS, which is how `dataplane: auto` decides.
    pub fn connect() -> Result<Self, IpvsError> {
        let open = |source| IpvsError::Io { operation: Operation::Open, source };
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(open)?;
        socket.bind_auto().map_err(open)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(open)?;
        // Acknowledgements of failed requests need not echo the whole request back.
        socket.set_cap_ack(true).map_err(open)?;
        socket.set_rx_buf_sz(RECEIVE_BUFFER).map_err(open)?;
        setsockopt(&socket, sockopt::ReceiveTimeout, &TimeVal::new(RECEIVE_TIMEOUT_SECONDS, 0))
            .map_err(|errno| open(io::Error::from(errno)))?;
        let mut client = Self {
            socket,
            family: 0,
            sequence: std::process::id(),
            outgoing: Vec::with_capacity(BATCH * 160),
            incoming: Vec::with_capacity(DATAGRAM),
            requests_sent: 0,
        };
        client.family = client.resolve_family()?;
        Ok(client)
    }

    /// The IPVS family id the kernel assigned.
    pub fn family(&self) -> u16 {
        self.family
    }

    /// Netlink requests sent since the client was opened (changes, dumps and the family lookup).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent
    }

    /// Every IPVS service in this network namespace, with its counters.
    pub fn services(&mut self) -> Result<Vec<ServiceEntry>, IpvsError> {
        let family = self.family;
        self.dump(Operation::ListServices, Object::None, |buffer, sequence| {
            codec::encode_service_dump(buffer, family, sequence);
        }, |body| match body {
            ReplyBody::Service(entry) => Some(entry),
            _ => None,
        })
    }

    /// The real servers of `service`, with their connection counts and counters. A service that does not exist
    /// has none.
    pub fn destinations(&mut self, service: &ServiceKey) -> Result<Vec<DestinationEntry>, IpvsError> {
        let family = self.family;
        self.dump(Operation::ListDestinations, Object::Service(*service), |buffer, sequence| {
            codec::encode_destination_dump(buffer, family, sequence, service);
        }, |body| match body {
            ReplyBody::Destination(entry) => Some(entry),
            _ => None,
        })
    }

    /// Sends every change, in order, and waits for every answer.
    ///
    /// Returns the changes the kernel refused; the others took effect. An `Err` means the socket itself failed,
    /// and the kernel's state past the last answer is unknown: read it again before planning.
    pub fn apply(&mut self, changes: &[Change]) -> Result<Vec<Refusal>, IpvsError> {
        let mut refusals = Vec::new();
        for (chunk_index, chunk) in changes.chunks(BATCH).enumerate() {
            let first_index = chunk_index * BATCH;
            let mut pending = HashMap::with_capacity(chunk.len());
            self.outgoing.clear();
            for (offset, change) in chunk.iter().enumerate() {
                let sequence = self.next_sequence();
                codec::encode_change(&mut self.outgoing, self.family, sequence, change);
                pending.insert(sequence, first_index + offset);
            }
            self.send(Operation::Apply, chunk.len())?;
            while !pending.is_empty() {
                for reply in self.receive(Operation::Apply)? {
                    let Some(index) = pending.get(&reply.sequence).copied() else { continue };
                    let refusal = match reply.body {
                        ReplyBody::Ack => None,
                        ReplyBody::Error(errno) => Some(errno),
                        // Only acknowledgements answer a change; anything else is not for us.
                        _ => continue,
                    };
                    pending.remove(&reply.sequence);
                    if let (Some(errno), Some(change)) = (refusal, changes.get(index)) {
                        let error = IpvsError::Kernel { operation: operation_of(change), object: object_of(change), errno };
                        refusals.push(Refusal { index, error });
                    }
                }
            }
        }
        refusals.sort_by_key(|refusal| refusal.index);
        Ok(refusals)
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let operation = Operation::ResolveFamily;
        let sequence = self.next_sequence();
        self.outgoing.clear();
        codec::encode_family_lookup(&mut self.outgoing, sequence);
        self.send(operation, 1)?;
        let mut family = None;
        loop {
            for reply in self.receive(operation)? {
                if reply.sequence != sequence {
                    continue;
                }
                match reply.body {
                    ReplyBody::Family(id) => family = Some(id),
                    ReplyBody::Ack => {
                        return family.ok_or_else(|| IpvsError::Protocol {
                            operation,
                            detail: "the controller acknowledged without naming a family id".to_owned(),
                        });
                    }
                    ReplyBody::Error(ENOENT) => return Err(IpvsError::Unavailable),
                    ReplyBody::Error(errno) => return Err(IpvsError::Kernel { operation, object: Object::None, errno }),
                    _ => {}
                }
            }
        }
    }

    fn dump<T>(
        &mut self,
        operation: Operation,
        object: Object,
        encode: impl FnOnce(&mut Vec<u8>, u32),
        mut take: impl FnMut(ReplyBody) -> Option<T>,
    ) -> Result<Vec<T>, IpvsError> {
        let sequence = self.next_sequence();
        self.outgoing.clear();
        encode(&mut self.outgoing, sequence);
        self.send(operation, 1)?;
        let mut entries = Vec::new();
        loop {
            for reply in self.receive(operation)? {
                if reply.sequence != sequence {
                    continue;
                }
                match reply.body {
                    ReplyBody::Done => return Ok(entries),
                    ReplyBody::Error(errno) => return Err(IpvsError::Kernel { operation, object, errno }),
                    body => entries.extend(take(body)),
                }
            }
        }
    }

    /// Sends the outgoing buffer, which holds `requests` requests, in one datagram.
    fn send(&mut self, operation: Operation, requests: usize) -> Result<(), IpvsError> {
        let sent = loop {
            match self.socket.send(&self.outgoing, 0) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => break result.map_err(|source| IpvsError::Io { operation, source })?,
            }
        };
        if sent != self.outgoing.len() {
            let detail = format!("sent {sent} of {} bytes", self.outgoing.len());
            return Err(IpvsError::Protocol { operation, detail });
        }
        self.requests_sent += requests as u64;
        Ok(())
    }

    /// Reads one datagram and decodes its messages.
    fn receive(&mut self, operation: Operation) -> Result<Vec<Reply>, IpvsError> {
        self.incoming.clear();
        self.incoming.reserve(DATAGRAM);
        let length = loop {
            match self.socket.recv(&mut self.incoming, REPORT_TRUE_LENGTH) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let source = io::Error::new(io::ErrorKind::TimedOut, "the kernel did not answer in time");
                    return Err(IpvsError::Io { operation, source });
                }
                result => break result.map_err(|source| IpvsError::Io { operation, source })?,
            }
        };
        if length > self.incoming.len() {
            let detail = format!("a {length}-byte datagram did not fit the {}-byte buffer", self.incoming.len());
            return Err(IpvsError::Protocol { operation, detail });
        }
        codec::decode(&self.incoming).map_err(|error| IpvsError::Protocol { operation, detail: error.to_string() })
    }
}


fn operation_of(change: &Change) -> Operation {
    match change {
        Change::AddService(_) => Operation::AddService,
        Change::UpdateService(_) => Operation::UpdateService,
        Change::DeleteService(_) => Operation::DeleteService,
        Change::AddDestination(..) => Operation::AddDestination,
        Change::UpdateDestination(..) => Operation::UpdateDestination,
        Change::DeleteDestination(..) => Operation::DeleteDestination,
    }
}

fn object_of(change: &Change) -> Object {
    match change.destination() {
        Some(destination) => Object::Destination(*change.service(), *destination),
        None => Object::Service(*change.service()),
    }
}
