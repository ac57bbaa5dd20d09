//! The secret-group rules (DESIGN §5), with openmls playing the clients.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, Extension, ExtensionType, Extensions,
    ExternalSender, GroupContext, GroupId, KeyPackage, LeafNodeParameters, MlsGroup,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProcessedMessageContent, ProtocolVersion, RatchetTreeIn, RequiredCapabilitiesExtension,
    SignaturePublicKey, StagedWelcome, UnknownExtension, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use rathaus_protocol::messages::{SecretGroupInfo, WelcomeInfo};
use rathaus_protocol::{
    frame, ClientMsgId, Content, DepartmentSlug, DeviceKey, EntryBody, ErrorCode, Event,
    GroupHandle, PostBody, Request, Response, Role, PROTOCOL_VERSION,
};

use super::events::Broadcast;
use super::mls::{RemovalKey, CIPHERSUITE, SERVER_IDENTITY};
use super::refused::{MlsRefused, SecretRefused};
use super::testing::{addr, removal_key, uid, Fixture, PASSWORD, T0};
use super::Reason;
use super::{LiveConnection, NewDevice, Refusal, Service, Session};
use crate::clock::ManualClock;
use crate::store::{Db, SledStore};

fn secret() -> GroupHandle {
    GroupHandle::parse("bauamt/secret").unwrap()
}

fn gid() -> Vec<u8> {
    b"rathaus:bauamt/secret".to_vec()
}

/// A device played by raw openmls over an in-memory provider.
struct Client {
    session: Session,
    signer: RemovalKey,
    provider: OpenMlsRustCrypto,
    group: Option<MlsGroup>,
}

impl Client {
    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(
                format!("{}/{}", self.session.user, self.session.device).into_bytes(),
            )
            .into(),
            signature_key: SignaturePublicKey::from(self.signer.public_key().to_vec()),
        }
    }

    fn key_package(&self, last_resort: bool) -> Vec<u8> {
        let capabilities = Capabilities::builder()
            .extensions(vec![
                ExtensionType::LastResort,
                ExtensionType::Unknown(rathaus_protocol::mls::GROUP_POLICY_EXTENSION),
            ])
            .build();
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, &self.provider, &self.signer, self.credential())
            .unwrap();
        encode(MlsMessageOut::from(bundle.key_package().clone()))
    }

    fn create_group(&mut self, group_id: &[u8], removal: [u8; 32]) {
        // A fresh provider, so a test can create the same group id again.
        self.provider = OpenMlsRustCrypto::default();
        let senders = vec![ExternalSender::new(
            SignaturePublicKey::from(removal.to_vec()),
            BasicCredential::new(SERVER_IDENTITY.to_vec()).into(),
        )];
        // The creator is the group's owner, as a Rathaus client's birth makes it.
        let policy = rathaus_protocol::mls::GroupPolicy {
            owners: vec![self.session.user.clone()],
            auto_admit: false,
        };
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .capabilities(
                Capabilities::builder()
                    .extensions(vec![ExtensionType::Unknown(
                        rathaus_protocol::mls::GROUP_POLICY_EXTENSION,
                    )])
                    .build(),
            )
            .with_group_context_extensions(
                Extensions::from_vec(vec![
                    Extension::ExternalSenders(senders),
                    Extension::Unknown(
                        rathaus_protocol::mls::GROUP_POLICY_EXTENSION,
                        UnknownExtension(policy.encode()),
                    ),
                    Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                        &[ExtensionType::Unknown(
                            rathaus_protocol::mls::GROUP_POLICY_EXTENSION,
                        )],
                        &[],
                        &[],
                    )),
                ])
                .unwrap(),
            )
            .build();
        self.group = Some(
            MlsGroup::new_with_group_id(
                &self.provider,
                &self.signer,
                &config,
                GroupId::from_slice(group_id),
                self.credential(),
            )
            .unwrap(),
        );
    }

    fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().unwrap()
    }

    fn epoch(&mut self) -> u64 {
        self.group().epoch().as_u64()
    }

    fn group_info(&mut self) -> Vec<u8> {
        let info = {
            let group = self.group.as_ref().unwrap();
            group
                .export_group_info(self.provider.crypto(), &self.signer, false)
                .unwrap()
        };
        encode(info)
    }

    fn ratchet_tree(&mut self) -> Vec<u8> {
        self.group()
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap()
    }

    /// Stages a commit adding the devices of `key_packages`: (commit, welcome).
    fn add(&mut self, key_packages: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let kps: Vec<KeyPackage> = key_packages
            .iter()
            .map(|bytes| {
                match MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
                    .unwrap()
                    .extract()
                {
                    MlsMessageBodyIn::KeyPackage(kp) => kp
                        .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                        .unwrap(),
                    _ => panic!("not a key package"),
                }
            })
            .collect();
        let (provider, signer) = (&self.provider, &self.signer);
        let (commit, welcome, _) = self
            .group
            .as_mut()
            .unwrap()
            .add_members(provider, signer, &kps)
            .unwrap();
        (encode(commit), encode(welcome))
    }

    fn self_update(&mut self) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let bundle = self
            .group
            .as_mut()
            .unwrap()
            .self_update(provider, signer, LeafNodeParameters::default())
            .unwrap();
        encode(bundle.into_messages().0)
    }

    fn set_context_extensions(&mut self, extensions: Extensions<GroupContext>) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let (commit, _, _) = self
            .group
            .as_mut()
            .unwrap()
            .update_group_context_extensions(provider, extensions, signer)
            .unwrap();
        encode(commit)
    }

    fn commit_pending(&mut self) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let (commit, _, _) = self
            .group
            .as_mut()
            .unwrap()
            .commit_to_pending_proposals(provider, signer)
            .unwrap();
        encode(commit)
    }

    fn discard(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    fn merge(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    fn join(&mut self, welcome: &WelcomeInfo) {
        let MlsMessageBodyIn::Welcome(w) =
            MlsMessageIn::tls_deserialize_exact(welcome.welcome.as_slice())
                .unwrap()
                .extract()
        else {
            panic!("not a welcome")
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(welcome.ratchet_tree.as_slice()).unwrap();
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build();
        let group = StagedWelcome::new_from_welcome(&self.provider, &config, w, Some(tree))
            .unwrap()
            .into_group(&self.provider)
            .unwrap();
        self.group = Some(group);
    }

    fn encrypt(&mut self, text: &[u8]) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        encode(
            self.group
                .as_mut()
                .unwrap()
                .create_message(provider, signer, text)
                .unwrap(),
        )
    }

    /// Processes a message; stores proposals, merges commits; returns application data.
    fn process(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        let provider = &self.provider;
        let group = self.group.as_mut().unwrap();
        match group
            .process_message(provider, message)
            .unwrap()
            .into_content()
        {
            ProcessedMessageContent::ApplicationMessage(m) => Some(m.into_bytes()),
            ProcessedMessageContent::ProposalMessage(p) => {
                group
                    .store_pending_proposal(provider.storage(), *p)
                    .unwrap();
                None
            }
            ProcessedMessageContent::StagedCommitMessage(c) => {
                group.merge_staged_commit(provider, *c).unwrap();
                None
            }
            _ => None,
        }
    }
}

fn encode(message: MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().unwrap()
}

/// Provisions and enrolls `id` with its own device key, in `departments`.
async fn user(f: &Fixture, id: &str, seed: u8, departments: &[&str]) -> Client {
    let code = match f
        .service
        .handle(
            &f.admin,
            Request::AddUser {
                user: uid(id),
                name: format!("User {id}"),
                departments: departments
                    .iter()
                    .map(|d| DepartmentSlug::parse(d).unwrap())
                    .collect(),
                roles: Vec::<Role>::new(),
            },
        )
        .await
        .unwrap()
    {
        Response::UserAdded {
            enrollment_code, ..
        } => enrollment_code,
        other => panic!("unexpected {other:?}"),
    };
    let key = SigningKey::from_bytes(&[seed; 32]);
    let device = match f
        .service
        .enroll(
            addr(),
            PROTOCOL_VERSION,
            &code,
            NewDevice {
                user: uid(id),
                password: PASSWORD.into(),
                device_key: DeviceKey(key.verifying_key().to_bytes()),
                device_name: "laptop".into(),
            },
        )
        .await
        .unwrap()
    {
        Response::Enrolled { device, .. } => device,
        other => panic!("unexpected {other:?}"),
    };
    Client {
        session: Session {
            user: uid(id),
            device,
        },
        signer: RemovalKey::new(key),
        provider: OpenMlsRustCrypto::default(),
        group: None,
    }
}

/// Department `bauamt` owned by `owner`.
async fn bauamt(f: &Fixture, owner: &str) {
    f.service
        .handle(
            &f.admin,
            Request::AddDepartment {
                slug: DepartmentSlug::parse("bauamt").unwrap(),
                name: "Bauamt".into(),
                owners: vec![uid(owner)],
            },
        )
        .await
        .unwrap();
}

async fn call(service: &Service, c: &Client, request: Request) -> Result<Response, Refusal> {
    service.handle(&c.session, request).await
}

async fn publish(service: &Service, c: &Client, one_time: usize) {
    let request = Request::PublishKeyPackages {
        one_time: (0..one_time).map(|_| c.key_package(false)).collect(),
        last_resort: Some(c.key_package(true)),
    };
    call(service, c, request).await.unwrap();
}

async fn claim(service: &Service, by: &Client, whom: &Client) -> Result<Response, Refusal> {
    let request = Request::ClaimKeyPackages {
        group: secret(),
        user: whom.session.user.clone(),
    };
    call(service, by, request).await
}

async fn birth(service: &Service, owner: &mut Client) -> Result<Response, Refusal> {
    owner.create_group(&gid(), removal_key().public_key());
    let request = Request::CreateSecretGroup {
        group: secret(),
        group_info: owner.group_info(),
        ratchet_tree: owner.ratchet_tree(),
    };
    call(service, owner, request).await
}

async fn commit(
    service: &Service,
    c: &mut Client,
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
) -> Result<Response, Refusal> {
    let epoch = c.epoch();
    commit_at(service, &c.session, epoch, commit, welcome).await
}

async fn commit_at(
    service: &Service,
    session: &Session,
    epoch: u64,
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
) -> Result<Response, Refusal> {
    let request = Request::Commit {
        group: secret(),
        epoch,
        commit,
        welcome,
        group_info: None,
    };
    service.handle(session, request).await
}

/// Owner `anna` (P1001) and member `ben` (P2002) in a born group, both at epoch 1.
async fn group_of_two(f: &Fixture) -> (Client, Client) {
    let mut anna = user(f, "P1001", 1, &[]).await;
    bauamt(f, "P1001").await;
    let mut ben = user(f, "P2002", 2, &["bauamt"]).await;
    publish(&f.service, &ben, 3).await;
    birth(&f.service, &mut anna).await.unwrap();
    let Response::KeyPackages { packages, .. } = claim(&f.service, &anna, &ben).await.unwrap()
    else {
        panic!("no packages")
    };
    let (c, w) = anna.add(&[packages[0].key_package.clone()]);
    let r = commit(&f.service, &mut anna, c, Some(w)).await.unwrap();
    assert!(matches!(r, Response::Committed { epoch: 1, .. }), "{r:?}");
    anna.merge();
    let Response::Welcomes(welcomes) = call(&f.service, &ben, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!("no welcomes")
    };
    assert_eq!(welcomes.len(), 1);
    ben.join(&welcomes[0]);
    (anna, ben)
}

async fn info(service: &Service, c: &Client) -> SecretGroupInfo {
    match call(service, c, Request::SecretGroups).await.unwrap() {
        Response::SecretGroups(mut groups) => groups.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

fn mls_post(id: u8, bytes: Vec<u8>) -> Request {
    Request::Post {
        group: secret(),
        client_id: ClientMsgId([id; 16]),
        body: PostBody::Mls(bytes),
    }
}

fn fetch() -> Request {
    Request::Fetch {
        group: secret(),
        since: 0,
        limit: 100,
    }
}

fn entries(r: Response) -> Vec<rathaus_protocol::LogEntry> {
    match r {
        Response::Entries { entries, .. } => entries,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_one_time_key_package_is_handed_out_once_then_the_last_resort() {
    let f = Fixture::new().await;
    let anna = user(&f, "P1001", 1, &[]).await;
    bauamt(&f, "P1001").await;
    let ben = user(&f, "P2002", 2, &["bauamt"]).await;
    let carl = user(&f, "P3003", 3, &[]).await;
    publish(&f.service, &ben, 2).await;
    assert_eq!(
        call(&f.service, &ben, Request::KeyPackageStatus)
            .await
            .unwrap(),
        Response::KeyPackageStatus {
            one_time: 2,
            last_resort: true
        }
    );
    let mut events = f.service.observe();

    let mut seen = Vec::new();
    for expect_last_resort in [false, false, true, true] {
        let Response::KeyPackages { packages, .. } = claim(&f.service, &anna, &ben).await.unwrap()
        else {
            panic!("no packages")
        };
        assert_eq!(packages.len(), 1);
        assert_eq!(packages[0].device, ben.session.device);
        assert_eq!(packages[0].last_resort, expect_last_resort);
        seen.push(packages[0].key_package.clone());
    }
    assert_ne!(seen[0], seen[1], "a one-time package was handed out twice");
    assert_eq!(seen[2], seen[3], "the last-resort package stays");
    // Ben's device hears that it runs low.
    let mut low = false;
    while let Ok(event) = events.try_recv() {
        if let Broadcast::Direct { user, frame, .. } = event {
            let decoded = frame::decode_body::<Response>(&frame[4..]).unwrap();
            low |= user == ben.session.user
                && matches!(decoded, Response::Event(Event::KeyPackagesLow { .. }));
        }
    }
    assert!(low);

    // Only owners claim before birth, and only for users on the roster.
    let r = claim(&f.service, &ben, &anna).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    let r = claim(&f.service, &anna, &carl).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);

    // A device publishes only packages naming itself with its registered key.
    let forged = Request::PublishKeyPackages {
        one_time: vec![carl.key_package(false)],
        last_resort: None,
    };
    let r = call(&f.service, &ben, forged).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);
    let mut wrong_key = user(&f, "P4004", 4, &[]).await;
    wrong_key.signer = RemovalKey::new(SigningKey::from_bytes(&[44; 32]));
    let r = call(
        &f.service,
        &wrong_key,
        Request::PublishKeyPackages {
            one_time: vec![wrong_key.key_package(false)],
            last_resort: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);
}

#[tokio::test]
async fn birth_checks_the_group_and_its_creator() {
    let f = Fixture::new().await;
    let mut anna = user(&f, "P1001", 1, &[]).await;
    bauamt(&f, "P1001").await;
    let mut ben = user(&f, "P2002", 2, &["bauamt"]).await;

    let before = info(&f.service, &ben).await;
    assert!(!before.born);
    assert_eq!(before.group_id, gid());
    assert_eq!(before.owners, vec![uid("P1001")]);
    assert_eq!(before.roster, vec![uid("P1001"), uid("P2002")]);
    assert_eq!(before.removal_key, removal_key().public_key());

    // Not an owner.
    let r = birth(&f.service, &mut ben).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);

    // Wrong group id.
    anna.create_group(b"bauamt/secret", removal_key().public_key());
    let request = Request::CreateSecretGroup {
        group: secret(),
        group_info: anna.group_info(),
        ratchet_tree: anna.ratchet_tree(),
    };
    let r = call(&f.service, &anna, request).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);

    // An external sender that is not the server's removal key.
    anna.create_group(&gid(), [9; 32]);
    let request = Request::CreateSecretGroup {
        group: secret(),
        group_info: anna.group_info(),
        ratchet_tree: anna.ratchet_tree(),
    };
    let r = call(&f.service, &anna, request).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);

    // Garbage.
    let r = call(
        &f.service,
        &anna,
        Request::CreateSecretGroup {
            group: secret(),
            group_info: vec![0, 1, 2],
            ratchet_tree: vec![3],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);

    assert_eq!(birth(&f.service, &mut anna).await.unwrap(), Response::Done);
    let r = birth(&f.service, &mut anna).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::AlreadyExists);

    let born = info(&f.service, &ben).await;
    assert!(born.born);
    assert_eq!(born.epoch, 0);
    assert_eq!(born.members, vec![(uid("P1001"), anna.session.device)]);
    assert_eq!(born.pending, vec![uid("P2002")]);
}

#[tokio::test]
async fn a_stale_commit_is_refused_and_one_of_two_concurrent_commits_wins() {
    let f = Fixture::new().await;
    let (mut anna, mut ben) = group_of_two(&f).await;
    assert_eq!(info(&f.service, &ben).await.epoch, 1);

    let from_anna = anna.self_update();
    let from_ben = ben.self_update();
    let (a, b) = tokio::join!(
        commit_at(&f.service, &anna.session, 1, from_anna, None),
        commit_at(&f.service, &ben.session, 1, from_ben, None),
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) => {
            anna.merge();
            ben.discard();
            (won, lost)
        }
        (Err(lost), Ok(won)) => {
            ben.merge();
            anna.discard();
            (won, lost)
        }
        other => panic!("expected one winner: {other:?}"),
    };
    assert!(
        matches!(won, Response::Committed { epoch: 2, .. }),
        "{won:?}"
    );
    assert_eq!(lost.code(), ErrorCode::StaleEpoch);
    assert!(
        matches!(
            lost.reason,
            Reason::Secret(SecretRefused::Stale { epoch: 2, .. })
        ),
        "{lost:?}"
    );

    // The loser fetches, processes the winning commit and is in sync again.
    let log = entries(call(&f.service, &anna, fetch()).await.unwrap());
    let last = log.last().unwrap();
    let EntryBody::Mls(bytes) = &last.body else {
        panic!("not MLS")
    };
    if anna.epoch() == 1 {
        anna.process(bytes);
    } else {
        ben.process(bytes);
    }
    assert_eq!(anna.epoch(), 2);
    assert_eq!(ben.epoch(), 2);
    assert_eq!(
        anna.group().epoch_authenticator().as_slice(),
        ben.group().epoch_authenticator().as_slice()
    );

    // A commit declared for an old epoch is stale, whatever it holds.
    let update = anna.self_update();
    let r = call(
        &f.service,
        &anna,
        Request::Commit {
            group: secret(),
            epoch: 1,
            commit: update,
            welcome: None,
            group_info: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(r.code(), ErrorCode::StaleEpoch);
}

#[tokio::test]
async fn members_may_rewrite_the_group_context_but_not_drop_the_removal_key() {
    let f = Fixture::new().await;
    let (mut anna, mut ben) = group_of_two(&f).await;

    // The owners' policy lives in the group context: a GroupContextExtensions commit
    // that keeps the removal key is an ordinary commit.
    let same = anna.group().extensions().clone();
    let c = anna.set_context_extensions(same);
    let r = commit(&f.service, &mut anna, c.clone(), None)
        .await
        .unwrap();
    assert!(matches!(r, Response::Committed { epoch: 2, .. }), "{r:?}");
    anna.merge();
    ben.process(&c);

    // Without the removal key the server could no longer offboard anyone.
    let c = ben.set_context_extensions(Extensions::empty());
    let refused = commit(&f.service, &mut ben, c, None).await.unwrap_err();
    assert_eq!(
        refused.reason,
        Reason::Secret(SecretRefused::Mls(MlsRefused::ExternalSendersChanged)),
    );
    ben.discard();
    assert_eq!(info(&f.service, &anna).await.epoch, 2);
}

#[tokio::test]
async fn adding_a_user_off_the_roster_is_refused() {
    let f = Fixture::new().await;
    let mut anna = user(&f, "P1001", 1, &[]).await;
    bauamt(&f, "P1001").await;
    let carl = user(&f, "P3003", 3, &[]).await;
    birth(&f.service, &mut anna).await.unwrap();
    // Carl's package reached Anna some other way; the server still refuses the Add.
    let (c, w) = anna.add(&[carl.key_package(false)]);
    let r = commit(&f.service, &mut anna, c, Some(w)).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    assert_eq!(info(&f.service, &anna).await.epoch, 0);
    let Response::Welcomes(w) = call(&f.service, &carl, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(w.is_empty());
}

#[tokio::test]
async fn only_devices_in_the_group_post_and_read_and_joiners_see_nothing_older() {
    let f = Fixture::new().await;
    let mut anna = user(&f, "P1001", 1, &[]).await;
    bauamt(&f, "P1001").await;
    let mut ben = user(&f, "P2002", 2, &["bauamt"]).await;
    publish(&f.service, &ben, 1).await;
    birth(&f.service, &mut anna).await.unwrap();

    // Before Ben joined: Anna talks to herself; Ben may neither post nor read.
    let early = anna.encrypt(b"vor Bens Zeit");
    let r = call(&f.service, &anna, mls_post(1, early)).await.unwrap();
    assert!(matches!(r, Response::Posted { seq: 1, .. }), "{r:?}");
    let r = call(&f.service, &ben, mls_post(2, vec![0; 8]))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    let r = call(&f.service, &ben, fetch()).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);

    let Response::KeyPackages { packages, .. } = claim(&f.service, &anna, &ben).await.unwrap()
    else {
        panic!()
    };
    let mut pushes = f.service.observe();
    let (c, w) = anna.add(&[packages[0].key_package.clone()]);
    let Response::Committed { seq: add_seq, .. } =
        commit(&f.service, &mut anna, c, Some(w)).await.unwrap()
    else {
        panic!()
    };
    anna.merge();
    // Everyone the commit touched is told to re-read their secret groups, in one push.
    let mut told = Vec::new();
    while let Ok(event) = pushes.try_recv() {
        if let Broadcast::Users { users, .. } = event {
            told.push(users);
        }
    }
    assert_eq!(told.len(), 1, "one push for the whole commit");
    assert!(told[0].contains(&ben.session.user));
    assert!(!told[0].contains(&f.admin.user));
    let Response::Welcomes(welcomes) = call(&f.service, &ben, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(welcomes[0].seq, add_seq);
    ben.join(&welcomes[0]);

    let mut events = f.service.observe();
    let hello = ben.encrypt(b"Hallo");
    let r = call(&f.service, &ben, mls_post(3, hello.clone()))
        .await
        .unwrap();
    // The pushed event goes to the devices in the group only, decided once for all.
    let Ok(Broadcast::Posted { readers, .. }) = events.try_recv() else {
        panic!("no event for the stored message")
    };
    assert!(readers.admits(&anna.session.user, anna.session.device));
    assert!(readers.admits(&ben.session.user, ben.session.device));
    assert!(!readers.admits(&f.admin.user, f.admin.device));
    assert!(!readers.admits(&ben.session.user, rathaus_protocol::DeviceId(u64::MAX)));
    assert!(matches!(
        r,
        Response::Posted {
            duplicate: false,
            ..
        }
    ));
    let again = call(&f.service, &ben, mls_post(3, hello)).await.unwrap();
    assert!(matches!(
        again,
        Response::Posted {
            duplicate: true,
            ..
        }
    ));

    // Ben reads from his join on; Anna everything.
    let bens: Vec<u64> = entries(call(&f.service, &ben, fetch()).await.unwrap())
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(bens, vec![add_seq + 1]);
    let annas = entries(call(&f.service, &anna, fetch()).await.unwrap());
    assert_eq!(annas.len(), 3);
    let EntryBody::Mls(bytes) = &annas[2].body else {
        panic!()
    };
    assert_eq!(anna.process(bytes).unwrap(), b"Hallo");

    // Public content, or a message of an old epoch, is refused.
    let r = call(
        &f.service,
        &anna,
        Request::Post {
            group: secret(),
            client_id: ClientMsgId([4; 16]),
            body: PostBody::Public(Content::text("Klartext").into()),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Invalid);
    let old = anna.encrypt(b"alt");
    let update = ben.self_update();
    commit(&f.service, &mut ben, update, None).await.unwrap();
    ben.merge();
    let r = call(&f.service, &anna, mls_post(5, old)).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::StaleEpoch);

    // The administrator is not on the roster: no log, no tree, no members.
    let r = f.service.handle(&f.admin, fetch()).await.unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    let r = f
        .service
        .handle(&f.admin, Request::RatchetTree { group: secret() })
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    let r = f
        .service
        .handle(&f.admin, Request::Members { group: secret() })
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::Forbidden);
    assert!(f.service.can_read(&anna.session, &secret()));
    assert!(!f.service.can_read(&f.admin, &secret()));
}

/// A live connection that only exists in the registry.
struct Online;

impl LiveConnection for Online {
    fn end_account_removed(&self) {}
}

#[tokio::test]
async fn offboarding_proposes_the_removal_and_asks_an_online_member_to_commit() {
    let f = Fixture::new().await;
    let (mut anna, ben) = group_of_two(&f).await;
    f.service
        .live()
        .register(&anna.session.user, anna.session.device, 1, Arc::new(Online));
    let mut events = f.service.observe();

    f.service
        .handle(
            &f.admin,
            Request::RemoveUser {
                user: ben.session.user.clone(),
            },
        )
        .await
        .unwrap();

    // Ben is out at once, before any commit.
    assert!(!f.service.can_read(&ben.session, &secret()));
    let state = info(&f.service, &anna).await;
    assert_eq!(state.roster, vec![uid("P1001")]);

    // The proposal is in the log, from the server.
    let log = entries(call(&f.service, &anna, fetch()).await.unwrap());
    let proposal = log.last().unwrap();
    assert_eq!(proposal.sender.as_str(), "rathaus-server");
    let EntryBody::Mls(bytes) = &proposal.body else {
        panic!()
    };
    anna.process(bytes);

    // Anna's device was asked to commit it.
    let mut asked = false;
    while let Ok(event) = events.try_recv() {
        if let Broadcast::Direct {
            user,
            device,
            frame,
        } = event
        {
            let decoded = frame::decode_body::<Response>(&frame[4..]).unwrap();
            if matches!(decoded, Response::Event(Event::CommitRequested { .. })) {
                assert_eq!(user, anna.session.user);
                assert_eq!(device, Some(anna.session.device));
                asked = true;
            }
        }
    }
    assert!(asked);

    // Nothing new while the request is fresh; the driver does not duplicate proposals.
    f.service.drive_removals(true).await;
    let again = entries(call(&f.service, &anna, fetch()).await.unwrap());
    assert_eq!(again.len(), log.len());

    let removal = anna.commit_pending();
    let r = commit(&f.service, &mut anna, removal, None).await.unwrap();
    assert!(matches!(r, Response::Committed { epoch: 2, .. }), "{r:?}");
    anna.merge();
    let state = info(&f.service, &anna).await;
    assert_eq!(state.members, vec![(uid("P1001"), anna.session.device)]);

    // Done: no further requests.
    f.clock.advance(Duration::from_secs(10));
    let mut events = f.service.observe();
    f.service.drive_removals(true).await;
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn uncommitted_removals_are_proposed_again_in_the_next_epoch() {
    let f = Fixture::new().await;
    let mut anna = user(&f, "P1001", 1, &[]).await;
    bauamt(&f, "P1001").await;
    let mut ben = user(&f, "P2002", 2, &["bauamt"]).await;
    let mut carl = user(&f, "P3003", 3, &["bauamt"]).await;
    publish(&f.service, &ben, 1).await;
    publish(&f.service, &carl, 1).await;
    birth(&f.service, &mut anna).await.unwrap();
    let mut kps = Vec::new();
    for c in [&ben, &carl] {
        let Response::KeyPackages { packages, .. } = claim(&f.service, &anna, c).await.unwrap()
        else {
            panic!()
        };
        kps.push(packages[0].key_package.clone());
    }
    let (c, w) = anna.add(&kps);
    commit(&f.service, &mut anna, c, Some(w)).await.unwrap();
    anna.merge();
    for c in [&mut ben, &mut carl] {
        let Response::Welcomes(w) = call(&f.service, c, Request::FetchWelcomes).await.unwrap()
        else {
            panic!()
        };
        c.join(&w[0]);
    }
    for c in [&anna, &ben] {
        let id = u64::from(c.session.user.as_str() == "P1001");
        f.service
            .live()
            .register(&c.session.user, c.session.device, id, Arc::new(Online));
    }

    f.service
        .handle(
            &f.admin,
            Request::RemoveUser {
                user: carl.session.user.clone(),
            },
        )
        .await
        .unwrap();
    let proposals = |log: &[rathaus_protocol::LogEntry]| {
        log.iter()
            .filter(|e| e.sender.as_str() == "rathaus-server")
            .count()
    };
    assert_eq!(
        proposals(&entries(call(&f.service, &anna, fetch()).await.unwrap())),
        1
    );

    // After five seconds without a commit, the next online member is asked.
    let mut events = f.service.observe();
    f.clock.advance(Duration::from_secs(6));
    f.service.drive_removals(true).await;
    let mut asked = Vec::new();
    while let Ok(Broadcast::Direct { user, .. }) = events.try_recv() {
        asked.push(user);
    }
    assert_eq!(asked.len(), 1);

    // Ben commits only a self-update: the proposal lapses with the epoch and is
    // issued again for the new one.
    let update = ben.self_update();
    commit(&f.service, &mut ben, update, None).await.unwrap();
    ben.merge();
    f.service.drive_removals(true).await;
    let log = entries(call(&f.service, &anna, fetch()).await.unwrap());
    assert_eq!(proposals(&log), 2);
    // Anna never saw the first proposal (its epoch is gone): she reads the update
    // and the new proposal, then commits.
    for entry in log.iter().filter(|e| e.seq > 2) {
        let EntryBody::Mls(bytes) = &entry.body else {
            panic!()
        };
        anna.process(bytes);
    }
    let removal = anna.commit_pending();
    commit(&f.service, &mut anna, removal, None).await.unwrap();
    anna.merge();
    let state = info(&f.service, &anna).await;
    assert!(!state.members.iter().any(|(u, _)| u.as_str() == "P3003"));
}

#[tokio::test]
async fn the_public_state_survives_a_reopen_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (mut anna, mut ben) = {
        let f = Fixture::over(Db::new(Arc::new(SledStore::open(&path).unwrap()))).await;
        let pair = group_of_two(&f).await;
        f.service.flush().await.unwrap();
        pair
    };
    let clock = Arc::new(ManualClock::new(T0));
    let db = Db::new(Arc::new(SledStore::open(&path).unwrap()));
    let service = Service::new(db, clock, removal_key()).unwrap();
    assert_eq!(info(&service, &anna).await.epoch, 1);
    let update = ben.self_update();
    let r = commit(&service, &mut ben, update, None).await.unwrap();
    assert!(matches!(r, Response::Committed { epoch: 2, .. }), "{r:?}");
    ben.merge();
    let log = entries(call(&service, &anna, fetch()).await.unwrap());
    let EntryBody::Mls(bytes) = &log.last().unwrap().body else {
        panic!()
    };
    anna.process(bytes);
    assert_eq!(anna.epoch(), 2);
    let Response::RatchetTree { epoch, .. } =
        call(&service, &anna, Request::RatchetTree { group: secret() })
            .await
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(epoch, 2);
}

/// A commit's Welcome and ratchet tree are stored once for every device it adds, and a
/// device's Welcome leaves its queue once the device reads the log from it on; one an
/// earlier release stored whole is handed out and taken the same way.
#[tokio::test]
async fn a_welcome_is_stored_once_per_commit_and_leaves_the_queue_once_taken() {
    let f = Fixture::new().await;
    let (mut anna, ben) = group_of_two(&f).await;
    let carl = user(&f, "P3003", 3, &["bauamt"]).await;
    let dora = user(&f, "P4004", 4, &["bauamt"]).await;
    let mut packages = Vec::new();
    for c in [&carl, &dora] {
        publish(&f.service, c, 1).await;
        let Response::KeyPackages { packages: p, .. } = claim(&f.service, &anna, c).await.unwrap()
        else {
            panic!("no packages")
        };
        packages.push(p[0].key_package.clone());
    }
    let (c, w) = anna.add(&packages);
    let Response::Committed { seq, .. } = commit(&f.service, &mut anna, c, Some(w)).await.unwrap()
    else {
        panic!("not committed")
    };
    anna.merge();
    let db = &f.service.db;
    for c in [&carl, &dora] {
        let queued = db
            .queued_welcomes(&c.session.user, c.session.device)
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].group.clone(), queued[0].seq), (secret(), seq));
    }
    let body = db.welcome_body(&secret(), seq).unwrap().expect("one body");
    assert!(!body.welcome.is_empty() && !body.ratchet_tree.is_empty());

    // Ben joined from his Welcome (at seq 1); reading from there on takes it.
    let ben_seq = db
        .queued_welcomes(&ben.session.user, ben.session.device)
        .unwrap()[0]
        .seq;
    let read = Request::Fetch {
        group: secret(),
        since: ben_seq,
        limit: 100,
    };
    call(&f.service, &ben, read.clone()).await.unwrap();
    assert!(db
        .queued_welcomes(&ben.session.user, ben.session.device)
        .unwrap()
        .is_empty());
    let Response::Welcomes(left) = call(&f.service, &ben, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!("no answer")
    };
    assert!(left.is_empty(), "{left:?}");

    // Reading from before it keeps Carl's (he has not joined yet).
    let early = Request::Fetch {
        group: secret(),
        since: seq - 1,
        limit: 100,
    };
    let _ = call(&f.service, &carl, early).await;
    assert_eq!(
        db.queued_welcomes(&carl.session.user, carl.session.device)
            .unwrap()
            .len(),
        1
    );

    // Dora's as an earlier release stored it: whole, under her device.
    let Response::Welcomes(mut hers) = call(&f.service, &dora, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!("no answer")
    };
    assert_eq!(hers.len(), 1);
    let mut w = crate::store::Writes::new();
    w.unqueue_welcome(&dora.session.user, dora.session.device, &secret())
        .put_legacy_welcomes(&dora.session.user, dora.session.device, &hers)
        .unwrap();
    db.apply(w).unwrap();
    let Response::Welcomes(legacy) = call(&f.service, &dora, Request::FetchWelcomes)
        .await
        .unwrap()
    else {
        panic!("no answer")
    };
    assert_eq!(legacy, hers);
    let taken = Request::Fetch {
        group: secret(),
        since: hers.remove(0).seq,
        limit: 100,
    };
    call(&f.service, &dora, taken).await.unwrap();
    assert!(db
        .legacy_welcomes(&dora.session.user, dora.session.device)
        .unwrap()
        .is_empty());
}

/// A member's MLS message larger than the protocol's post limit is refused before it is
/// stored: one that filled a frame would make every later `Fetch` answer from before it
/// too large to send, and no member could read past it. A commit is held to what one
/// answer can carry.
#[tokio::test]
async fn an_oversized_mls_message_or_commit_is_refused_and_the_log_stays_readable() {
    use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_POST_PAYLOAD};
    let f = Fixture::new().await;
    let (mut anna, mut ben) = group_of_two(&f).await;
    let overhead = ben.encrypt(&[0; 1000]).len() - 1000;

    let filling = ben.encrypt(&vec![0; MAX_CONTROL_FRAME - 64 - overhead]);
    let r = call(&f.service, &ben, mls_post(8, filling))
        .await
        .unwrap_err();
    assert_eq!(r.code(), ErrorCode::TooLarge, "{r:?}");

    // (The length prefixes grow with the message by a few bytes.)
    let largest = ben.encrypt(&vec![0; MAX_POST_PAYLOAD - overhead - 8]);
    assert!(largest.len() <= MAX_POST_PAYLOAD && largest.len() > MAX_POST_PAYLOAD - 16);
    call(&f.service, &ben, mls_post(9, largest.clone()))
        .await
        .unwrap();
    let answer = call(&f.service, &anna, fetch()).await.unwrap();
    assert!(frame::encode(&answer).is_ok(), "the answer fits in a frame");
    let read = entries(answer);
    assert_eq!(read.last().map(|e| &e.body), Some(&EntryBody::Mls(largest)));

    let epoch = anna.epoch();
    let r = commit_at(
        &f.service,
        &anna.session,
        epoch,
        vec![0; super::groups::FETCH_BUDGET + 1],
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(r.code(), ErrorCode::TooLarge, "{r:?}");
}
