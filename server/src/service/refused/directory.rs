//! People, departments, devices, roles, enrollment and imports: what administrators
//! provision and what colleagues do with their own accounts.

use rathaus_protocol::limits::{MAX_IMPORT_ROWS, MAX_LIST, MAX_NAME, MAX_PASSWORD, MIN_PASSWORD};
use rathaus_protocol::{DepartmentSlug, ErrorCode, UserId};

/// Why a directory or account request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryRefused {
    /// A short name that `rathaus://` links use for something else.
    #[error(
        "{0} cannot name a department: rathaus://{0}/ links name something else; choose \
         another short name"
    )]
    ReservedSlug(DepartmentSlug),
    /// The department exists.
    #[error("department {0} exists already")]
    DepartmentExists(DepartmentSlug),
    /// The department was retired; its name stays taken.
    #[error(
        "department {0} was retired; its groups keep their history, so the name is not given \
         out again"
    )]
    DepartmentRetired(DepartmentSlug),
    /// The personnel number the server signs its own entries with.
    #[error("{0} is reserved for the server's own log entries")]
    ReservedUser(UserId),
    /// The user exists.
    #[error("user {0} exists already")]
    UserExists(UserId),
    /// An administrator offboarding themselves.
    #[error("you cannot remove yourself; ask another administrator")]
    RemoveSelf,
    /// An administrator resetting themselves.
    #[error(
        "you cannot reset yourself; ask another administrator (or use `rathaus-server \
         admin-code` on the server)"
    )]
    ResetSelf,
    /// Offboarded once already.
    #[error("{0} was offboarded already")]
    OffboardedAlready(UserId),
    /// A break-glass code for someone offboarded.
    #[error("{0} was offboarded; choose another administrator")]
    Offboarded(UserId),
    /// A department both joined and left in one request.
    #[error("{0} is both to join and to leave")]
    JoinAndLeave(DepartmentSlug),
    /// A name that is empty or too long.
    #[error("names must be 1 to {MAX_NAME} bytes")]
    Name,
    /// A list over its limit.
    #[error("too many {0} (at most {MAX_LIST})")]
    TooMany(&'static str),
    /// An import over its row limit.
    #[error("at most {MAX_IMPORT_ROWS} rows per import request")]
    ImportTooLarge,
    /// The enrollment code is unknown, used or expired (never which).
    #[error(
        "this enrollment code is unknown, already used or expired; ask your administrator for \
         a new one"
    )]
    CodeInvalid,
    /// A new password outside the limits.
    #[error(
        "the password must have at least {MIN_PASSWORD} characters and at most {MAX_PASSWORD} \
         bytes"
    )]
    Password,
    /// The user or the password is wrong (never which).
    #[error("wrong user or password")]
    WrongPassword,
    /// As many devices as one colleague may have are active (or were ever enrolled).
    #[error(
        "{user} has {active} active devices, the most one colleague may have (and at most \
         {records} ever enrolled); remove one with `rathaus devices remove`, or ask IT"
    )]
    TooManyDevices {
        /// The user.
        user: UserId,
        /// Devices active now.
        active: usize,
        /// Devices ever enrolled, at most.
        records: usize,
    },
    /// The current password, when changing it.
    #[error("the current password is wrong")]
    CurrentPasswordWrong,
    /// A password change before the account has one.
    #[error("this account has no password yet")]
    NoPassword,
    /// A device key that is not one.
    #[error("the device key is not a valid Ed25519 public key")]
    DeviceKey,
    /// A device name over its limit.
    #[error("device names are at most {MAX_NAME} bytes")]
    DeviceName,
    /// Removing the device in use.
    #[error("this is the device you are using; remove it from another of your devices")]
    RemoveThisDevice,
    /// Too many roles in one request.
    #[error("too many roles")]
    TooManyRoles,
    /// The member role stays.
    #[error("every colleague keeps the member role; offboard with `admin user remove`")]
    KeepMember,
    /// A role both added and removed.
    #[error("role {0} is both added and removed")]
    RoleBoth(&'static str),
    /// An administrator taking away their own admin role.
    #[error("you cannot take away your own admin role; ask another administrator")]
    OwnAdminRole,
}

impl DirectoryRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::DepartmentExists(_) | Self::DepartmentRetired(_) | Self::UserExists(_) => {
                ErrorCode::AlreadyExists
            }
            Self::OffboardedAlready(_) => ErrorCode::NotFound,
            Self::Offboarded(_) => ErrorCode::Forbidden,
            Self::ImportTooLarge | Self::TooManyDevices { .. } => ErrorCode::TooLarge,
            Self::CodeInvalid => ErrorCode::CodeInvalid,
            Self::WrongPassword | Self::CurrentPasswordWrong => ErrorCode::Unauthenticated,
            Self::ReservedSlug(_)
            | Self::ReservedUser(_)
            | Self::RemoveSelf
            | Self::ResetSelf
            | Self::JoinAndLeave(_)
            | Self::Name
            | Self::TooMany(_)
            | Self::Password
            | Self::NoPassword
            | Self::DeviceKey
            | Self::DeviceName
            | Self::RemoveThisDevice
            | Self::TooManyRoles
            | Self::KeepMember
            | Self::RoleBoth(_)
            | Self::OwnAdminRole => ErrorCode::Invalid,
        }
    }
}
