//! The crate error: one enum per layer folded together, and the SQLSTATE each maps to.

use std::fmt;

use crate::backend::BackendError;
use crate::config::ConfigError;
use crate::router::RouteError;

/// A five-character SQLSTATE code. Named constants only: no string literals elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    pub const WARNING: SqlState = SqlState("01000");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const TRANSACTION_RESOLUTION_UNKNOWN: SqlState = SqlState("08007");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState("22003");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    pub const CANT_CHANGE_RUNTIME_PARAM: SqlState = SqlState("55P02");
    pub const CHARACTER_NOT_IN_REPERTOIRE: SqlState = SqlState("22021");
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState("22P02");
    pub const INVALID_BINARY_REPRESENTATION: SqlState = SqlState("22P03");
    pub const BAD_COPY_FILE_FORMAT: SqlState = SqlState("22P04");
    pub const NOT_NULL_VIOLATION: SqlState = SqlState("23502");
    pub const CHECK_VIOLATION: SqlState = SqlState("23514");
    pub const ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25001");
    pub const NO_ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25P01");
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState("25P03");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_SAVEPOINT_SPECIFICATION: SqlState = SqlState("3B001");
    pub const TRANSACTION_ROLLBACK: SqlState = SqlState("40000");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const UNDEFINED_TABLE: SqlState = SqlState("42P01");
    pub const INVALID_COLUMN_REFERENCE: SqlState = SqlState("42P10");
    pub const DATATYPE_MISMATCH: SqlState = SqlState("42804");
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    pub const INVALID_CURSOR_NAME: SqlState = SqlState("34000");
    pub const DUPLICATE_CURSOR: SqlState = SqlState("42P03");
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    pub const LOCK_NOT_AVAILABLE: SqlState = SqlState("55P03");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const DEADLOCK_DETECTED: SqlState = SqlState("40P01");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    pub fn code(&self) -> &'static str {
        self.0
    }

    /// The SQLSTATE a shard gave for a setting it refused, when it is one
    /// of those `SET` gives.
    pub fn of_setting(code: &str) -> Option<SqlState> {
        [
            SqlState::UNDEFINED_OBJECT,
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::CANT_CHANGE_RUNTIME_PARAM,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::SYNTAX_ERROR,
        ]
        .into_iter()
        .find(|s| s.0 == code)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Errors of the client side of a session (protocol, authentication).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Protocol(String),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("invalid byte sequence for encoding \"UTF8\" in query string")]
    InvalidUtf8,
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error("canceling authentication due to timeout")]
    StartupTimeout,
    #[error("permission denied: user \"{0}\" is not an admin user")]
    NotAdmin(String),
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransaction,
    #[error("this server requires TLS (connect with sslmode=require or stricter)")]
    TlsRequired,
    /// The `auth_query` shard could not be reached (the log names it).
    #[error("could not look up the password of user \"{0}\": the auth_query shard is unavailable")]
    AuthLookupUnavailable(String),
    /// The `auth_query` shard answered with an error (the log says which).
    #[error("could not look up the password of user \"{0}\": the auth_query failed (see the proxy's log)")]
    AuthLookupFailed(String),
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid byte sequence for encoding \"UTF8\" in startup parameter \"{0}\"")]
    StartupEncoding(String),
    /// The connection is closed without an answer (PostgreSQL logs these
    /// and answers nothing): the reason is for the log.
    #[error("{0}")]
    Dropped(String),
    #[error("replication connections are not supported through Pieskieo: connect a WAL sender or logical decoding client to a shard directly")]
    Replication,
    #[error("invalid value for parameter \"replication\": \"{0}\"")]
    BadReplication(String),
    /// A malformed `options` argument, in PostgreSQL's words.
    #[error("{0}")]
    OptionSyntax(String),
    #[error("empty password returned by client")]
    EmptyPassword,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("startup option \"{0}\" is not supported through Pieskieo: pass settings in options as -c name=value or --name=value")]
    StartupOption(String),
}

/// Everything a client can be told went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Txn(TxnMisuse),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Keys(#[from] NoKeys),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A shard refused a setting of the client's (from its startup packet,
    /// most likely), in the shard's words and with its SQLSTATE.
    #[error("{message}")]
    Setting { code: SqlState, message: String },
    /// `consistent_reads`: the lock shard did not grant the fence's lock.
    #[error(transparent)]
    Fence(#[from] crate::txn::fence::FenceError),
    /// The client's cancel request ended a wait in the proxy itself (the
    /// consistent-read fence), in PostgreSQL's words.
    #[error("canceling statement due to user request")]
    Canceled,
}

/// Transaction-block misuse the proxy itself detects.
#[derive(Debug, PartialEq, Eq)]
pub enum TxnMisuse {
    /// A statement inside a failed transaction block.
    Aborted,
    /// `ROLLBACK TO` / `RELEASE` of a savepoint that was never made.
    NoSavepoint(String),
    /// `DISCARD ALL` inside a block.
    DiscardInBlock,
    /// A savepoint command (`SAVEPOINT`, `RELEASE SAVEPOINT`, `ROLLBACK TO
    /// SAVEPOINT`, as named) outside an explicit block.
    OutsideBlock(&'static str),
    /// `COMMIT`/`ROLLBACK` with no block open (a WARNING in PostgreSQL).
    NoTransaction,
    /// `BEGIN` inside a block (a WARNING in PostgreSQL).
    AlreadyInProgress,
    /// `BEGIN ISOLATION LEVEL ...` after a statement of the implicit block
    /// it would turn into an explicit one.
    IsolationAfterQuery,
    /// `BEGIN ISOLATION LEVEL ...` (another level) inside a savepoint.
    IsolationInSubtransaction,
}

/// Why the keys an `INSERT` left to the cluster could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum NoKeys {
    #[error("relation \"{0}\" does not exist")]
    NoTable(String),
    #[error("column \"{column}\" of sharded table \"{table}\" has no sequence (serial, bigserial or identity): give the shard key in the INSERT (or in the COPY's column list)")]
    NoSequence { table: String, column: String },
    /// The sequence shard did not answer: inserts that give their keys
    /// still work.
    #[error("keys for \"{table}\" come from its sequence on shard {shard}, which is unavailable ({cause}); give the shard key in the INSERT (or in the COPY's column list), or retry")]
    Unavailable {
        table: String,
        shard: crate::router::ShardId,
        cause: String,
    },
}

/// A prepared statement or portal name the client used wrongly.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("prepared statement \"{0}\" does not exist")]
    NoStatement(String),
    #[error("prepared statement \"{0}\" already exists")]
    StatementExists(String),
    #[error("portal \"{0}\" does not exist")]
    NoPortal(String),
    #[error("cursor \"{0}\" already exists")]
    PortalExists(String),
    #[error("portal \"{0}\" cannot be run")]
    PortalDone(String),
}

impl fmt::Display for TxnMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnMisuse::Aborted => f.write_str(
                "current transaction is aborted, commands ignored until end of transaction block",
            ),
            TxnMisuse::NoSavepoint(name) => write!(f, "savepoint \"{name}\" does not exist"),
            TxnMisuse::DiscardInBlock => {
                f.write_str("DISCARD ALL cannot run inside a transaction block")
            }
            TxnMisuse::OutsideBlock(what) => {
                write!(f, "{what} can only be used in transaction blocks")
            }
            TxnMisuse::NoTransaction => f.write_str("there is no transaction in progress"),
            TxnMisuse::AlreadyInProgress => {
                f.write_str("there is already a transaction in progress")
            }
            TxnMisuse::IsolationAfterQuery => {
                f.write_str("SET TRANSACTION ISOLATION LEVEL must be called before any query")
            }
            TxnMisuse::IsolationInSubtransaction => f.write_str(
                "SET TRANSACTION ISOLATION LEVEL must not be called in a subtransaction",
            ),
        }
    }
}

impl Error {
    /// The SQLSTATE the client sees. Exhaustive on purpose: a new error must choose.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::Client(e) => match e {
                ClientError::Protocol(_) => SqlState::PROTOCOL_VIOLATION,
                ClientError::AuthFailed(_) => SqlState::INVALID_PASSWORD,
                ClientError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
                ClientError::InvalidUtf8 => SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                ClientError::TooManyClients => SqlState::TOO_MANY_CONNECTIONS,
                ClientError::Shutdown => SqlState::ADMIN_SHUTDOWN,
                ClientError::StartupTimeout => SqlState::PROTOCOL_VIOLATION,
                ClientError::NotAdmin(_) => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                ClientError::IdleInTransaction => SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                ClientError::TlsRequired => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                ClientError::StartupOption(_) => SqlState::FEATURE_NOT_SUPPORTED,
                ClientError::UnsupportedProtocol(..) => SqlState::FEATURE_NOT_SUPPORTED,
                ClientError::StartupEncoding(_) => SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                ClientError::Dropped(_) => SqlState::PROTOCOL_VIOLATION,
                ClientError::Replication => SqlState::FEATURE_NOT_SUPPORTED,
                ClientError::BadReplication(_) => SqlState::INVALID_PARAMETER_VALUE,
                ClientError::OptionSyntax(_) => SqlState::SYNTAX_ERROR,
                ClientError::EmptyPassword => SqlState::INVALID_PASSWORD,
                ClientError::NoUser => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                ClientError::AuthLookupUnavailable(_) => SqlState::CONNECTION_FAILURE,
                ClientError::AuthLookupFailed(_) => SqlState::INTERNAL_ERROR,
            },
            Error::Route(e) => e.sqlstate(),
            Error::Backend(e) => e.sqlstate(),
            Error::Config(_) => SqlState::INTERNAL_ERROR,
            Error::Unsupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            Error::Txn(TxnMisuse::Aborted) => SqlState::IN_FAILED_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::NoSavepoint(_)) => SqlState::INVALID_SAVEPOINT_SPECIFICATION,
            Error::Txn(TxnMisuse::DiscardInBlock) => SqlState::ACTIVE_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::OutsideBlock(_)) => SqlState::NO_ACTIVE_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::NoTransaction) => SqlState::NO_ACTIVE_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::AlreadyInProgress) => SqlState::ACTIVE_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::IsolationAfterQuery) => SqlState::ACTIVE_SQL_TRANSACTION,
            Error::Txn(TxnMisuse::IsolationInSubtransaction) => SqlState::ACTIVE_SQL_TRANSACTION,
            Error::Name(NameError::NoStatement(_)) => SqlState::INVALID_SQL_STATEMENT_NAME,
            Error::Name(NameError::StatementExists(_)) => SqlState::DUPLICATE_PREPARED_STATEMENT,
            Error::Name(NameError::NoPortal(_)) => SqlState::INVALID_CURSOR_NAME,
            Error::Name(NameError::PortalExists(_)) => SqlState::DUPLICATE_CURSOR,
            Error::Name(NameError::PortalDone(_)) => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::Keys(NoKeys::NoTable(_)) => SqlState::UNDEFINED_TABLE,
            Error::Keys(NoKeys::NoSequence { .. }) => SqlState::FEATURE_NOT_SUPPORTED,
            Error::Keys(NoKeys::Unavailable { .. }) => SqlState::CONNECTION_FAILURE,
            Error::Io(_) => SqlState::CONNECTION_FAILURE,
            Error::Setting { code, .. } => *code,
            Error::Fence(_) => SqlState::CONNECTION_FAILURE,
            Error::Canceled => SqlState::QUERY_CANCELED,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
