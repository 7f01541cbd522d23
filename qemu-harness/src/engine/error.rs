//! What can go wrong in an engine operation, and what kind of failure it is (a front end maps
//! the kind to its exit code or HTTP status).

use crate::image::ImageError;
use crate::images::StoreError;
use crate::network::NetworkError;
use crate::state::StateError;
use crate::vm::VmError;
use crate::volume::VolumeError;

/// The kind of a failure, as docker's API distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404: no such object.
    NotFound,
    /// 409: the object is in a state or has a name that forbids the operation.
    Conflict,
    /// 400: the request itself is wrong.
    BadRequest,
    /// 304: nothing to do (already started, already stopped).
    NotModified,
    /// 500: the engine or the VM failed.
    Internal,
}

/// Engine errors. The messages are docker's where a docker user would see them.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// A path in a container that does not exist (its text says which).
    #[error("{0}")]
    PathNotFound(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// A pull of anything but the built-in image: there is no registry.
    #[error("pull access denied for {0}: this VCH has no registry to pull from; docker load and docker import (vch load, vch import) add images")]
    PullDenied(String),
    #[error("Container {0} is not running")]
    NotRunning(String),
    #[error("Container {0} is already running")]
    AlreadyRunning(String),
    #[error("container {0} is already stopped")]
    AlreadyStopped(String),
    #[error("You cannot remove a running container {0}. Stop the container before attempting removal or force remove")]
    RemoveRunning(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The tether could not launch the process (its `started` text).
    #[error("{0}")]
    StartFailed(String),
    /// The container's back-channel or keeper could not be reached.
    #[error("{0}")]
    Backchannel(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl EngineError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        use EngineError as E;
        match self {
            E::NoSuchContainer(_)
            | E::NoSuchExec(_)
            | E::NoSuchImage(_)
            | E::PullDenied(_)
            | E::PathNotFound(_) => ErrorKind::NotFound,
            E::NotRunning(_) | E::RemoveRunning(_) | E::Conflict(_) => ErrorKind::Conflict,
            E::AlreadyRunning(_) | E::AlreadyStopped(_) => ErrorKind::NotModified,
            E::BadRequest(_) => ErrorKind::BadRequest,
            E::StartFailed(_) | E::Backchannel(_) | E::Io { .. } => ErrorKind::Internal,
            E::State(StateError::NoSuch(_)) => ErrorKind::NotFound,
            E::State(StateError::NameInUse(..)) => ErrorKind::Conflict,
            E::State(_) => ErrorKind::Internal,
            E::Volume(v) => volume_kind(v),
            E::Network(n) => network_kind(n),
            E::Image(i) => image_kind(i),
            E::Store(s) => store_kind(s),
            E::Vm(v) => match v {
                VmError::Image(i) => image_kind(i),
                VmError::State(StateError::NameInUse(..)) => ErrorKind::Conflict,
                VmError::NoCommand | VmError::Usage(_) | VmError::Compose(_) => {
                    ErrorKind::BadRequest
                }
                VmError::Volume(v) => volume_kind(v),
                VmError::Network(n) => network_kind(n),
                _ => ErrorKind::Internal,
            },
        }
    }
}

fn image_kind(i: &ImageError) -> ErrorKind {
    match i {
        ImageError::NotFound(_) => ErrorKind::NotFound,
        ImageError::BadConfig { .. } => ErrorKind::BadRequest,
        ImageError::Store(s) => store_kind(s),
        _ => ErrorKind::Internal,
    }
}

fn store_kind(s: &StoreError) -> ErrorKind {
    if s.is_not_found() {
        ErrorKind::NotFound
    } else if s.is_conflict() {
        ErrorKind::Conflict
    } else if s.is_bad_input() {
        ErrorKind::BadRequest
    } else {
        ErrorKind::Internal
    }
}

fn network_kind(n: &NetworkError) -> ErrorKind {
    use crate::ipam::IpamError;
    match n {
        NetworkError::Ipam(IpamError::Io { .. }) => ErrorKind::Internal,
        NetworkError::Ipam(IpamError::InUse { .. } | IpamError::Exhausted { .. }) => {
            ErrorKind::Conflict
        }
        NetworkError::NoSuch(_) => ErrorKind::NotFound,
        NetworkError::Exists(_) | NetworkError::InUse { .. } | NetworkError::Builtin(_) => {
            ErrorKind::Conflict
        }
        NetworkError::Record(_) | NetworkError::Io { .. } => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    }
}

fn volume_kind(v: &VolumeError) -> ErrorKind {
    match v {
        VolumeError::NoSuch(_) => ErrorKind::NotFound,
        VolumeError::Exists(_) | VolumeError::InUse { .. } | VolumeError::LabelInUse { .. } => {
            ErrorKind::Conflict
        }
        VolumeError::InvalidName(_)
        | VolumeError::InvalidLabel(..)
        | VolumeError::BadSize(..)
        | VolumeError::BadSpec { .. }
        | VolumeError::BadNfs(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    }
}
