//! Statement tickets: what `GetFlightInfo` hands a client and `DoGet`
//! receives back. Tickets are untrusted input (a client can send any
//! bytes), so they carry no authority: a query ticket holds only SQL, which
//! `DoGet` runs as the authenticated caller (with the plan that caller's
//! own `GetFlightInfo` made, or planned anew); an update ticket only echoes
//! a row count. Kept apart from the service so the decoder can
//! be fuzzed on its own (`fuzz/`).

use arrow_flight::Ticket;
use arrow_flight::sql::{Any, Command, ProstMessageExt, TicketStatementQuery};
use prost::Message;

use crate::error::{Error, Result};

/// What a statement ticket asks `DoGet` for.
#[derive(Debug, PartialEq, Eq)]
pub enum StatementTicket {
    /// Run this query.
    Query(String),
    /// An update already executed by `GetFlightInfo`; report its count.
    Updated(u64),
}

fn malformed() -> Error {
    Error::InvalidArgument("malformed statement ticket".into())
}

impl StatementTicket {
    /// The Flight ticket for this statement.
    pub fn encode(&self) -> Ticket {
        let handle = match self {
            StatementTicket::Query(sql) => [b"Q", sql.as_bytes()].concat(),
            StatementTicket::Updated(n) => [b"U".as_slice(), &n.to_le_bytes()].concat(),
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        Ticket::new(ticket.as_any().encode_to_vec())
    }

    /// Decode the handle of a `TicketStatementQuery` (what the Flight SQL
    /// dispatcher passes to `do_get_statement`).
    pub fn decode(ticket: &TicketStatementQuery) -> Result<Self> {
        match ticket.statement_handle.split_first() {
            Some((b'Q', sql)) => Ok(Self::Query(
                String::from_utf8(sql.to_vec()).map_err(|_| malformed())?,
            )),
            Some((b'U', n)) => Ok(Self::Updated(u64::from_le_bytes(
                n.try_into().map_err(|_| malformed())?,
            ))),
            _ => Err(malformed()),
        }
    }

    /// Decode raw ticket bytes the way a `DoGet` call is dispatched: a
    /// protobuf `Any`, then the Flight SQL command, then the handle. Any
    /// other command is not a statement ticket.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self> {
        let any = Any::decode(bytes).map_err(|_| malformed())?;
        match Command::try_from(any).map_err(|_| malformed())? {
            Command::TicketStatementQuery(t) => Self::decode(&t),
            _ => Err(malformed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_tickets_round_trip_and_reject_garbage() {
        for t in [
            StatementTicket::Query("SELECT 1".into()),
            StatementTicket::Updated(42),
        ] {
            let ticket = t.encode();
            assert_eq!(StatementTicket::decode_bytes(&ticket.ticket).unwrap(), t);
        }
        for garbage in [&b""[..], b"X", b"U123", b"Q\xff\xfe"] {
            let cmd = TicketStatementQuery {
                statement_handle: garbage.to_vec().into(),
            };
            assert!(StatementTicket::decode(&cmd).is_err(), "{garbage:?}");
            assert!(StatementTicket::decode_bytes(garbage).is_err());
        }
    }
}
