//! The key store (feature `storage`) on flash in RAM: what it returns after
//! a power cut at every step of every write, after bit flips, and on bad
//! input.

use embassy_futures::block_on;
use embedded_storage_async::nor_flash::NorFlash;
use tether_core::scram::{CachedKeys, Mechanism};
use tether_firmware::storage::{
    FORMAT, KeyStore, MAX_USERNAME_LEN, PowerCut, RamFlash, RamFlashError, StorageError, Stored,
};

fn keys(password: &str, salt: &str, iterations: u32) -> CachedKeys {
    CachedKeys::derive(
        Mechanism::ScramSha256,
        password,
        salt.as_bytes(),
        iterations,
    )
    .unwrap()
}

fn stored(username: &str, keys: Option<&CachedKeys>) -> Stored {
    Stored {
        username: username.try_into().unwrap(),
        keys: keys.cloned(),
    }
}

/// The whole flash is the store's region.
fn store<const W: usize, const E: usize>(flash: RamFlash<W, E>) -> KeyStore<RamFlash<W, E>> {
    let end = flash.as_bytes().len() as u32;
    KeyStore::new(flash, 0..end).unwrap()
}

fn load<const W: usize, const E: usize>(flash: &RamFlash<W, E>) -> Option<Stored> {
    let mut s = store(flash.clone());
    block_on(s.load()).unwrap()
}

fn save<const W: usize, const E: usize>(flash: RamFlash<W, E>, value: &Stored) -> RamFlash<W, E> {
    let mut s = store(flash);
    block_on(s.save(&value.username, value.keys.as_ref())).unwrap();
    s.into_inner()
}

/// One write operation on the store, as the tests below cut it.
#[derive(Clone)]
enum Op<'a> {
    Save(&'a Stored),
    ForgetKeys,
}

impl Op<'_> {
    fn run<F: NorFlash>(&self, store: &mut KeyStore<F>) -> Result<(), StorageError<F::Error>> {
        match self {
            Op::Save(v) => block_on(store.save(&v.username, v.keys.as_ref())),
            Op::ForgetKeys => block_on(store.forget_keys()),
        }
    }
}

/// Runs `op` on `flash` (holding `before`) with the power failing at each
/// of its steps in turn, torn or not. After each failure the device
/// reboots: the store must return exactly `before` or `after`, the same
/// on a second boot, and must take a new record.
fn cut_everywhere<const W: usize, const E: usize>(
    flash: &RamFlash<W, E>,
    before: &Option<Stored>,
    op: &Op<'_>,
    after: &Option<Stored>,
) -> u64 {
    // A clean run counts the steps and checks the result.
    let mut clean = flash.clone();
    clean.power_on();
    let mut s = store(clean);
    op.run(&mut s).unwrap();
    let clean = s.into_inner();
    let steps = clean.steps();
    assert_eq!(&load(&clean), after, "without a power cut");

    let fresh = stored("after-reboot", Some(&keys("fresh", "salt-fresh", 4096)));
    for n in 0..steps {
        for cut in [PowerCut::Before(n), PowerCut::Torn(n)] {
            let mut f = flash.clone();
            f.power_on();
            f.schedule(cut);
            let mut s = store(f);
            let result = op.run(&mut s);
            assert_eq!(
                result,
                Err(StorageError::Flash(RamFlashError::PowerCut)),
                "{cut:?} of {steps}"
            );
            let mut f = s.into_inner();
            assert!(f.is_off());
            f.power_on();
            let got = load(&f);
            assert!(
                &got == before || &got == after,
                "{cut:?} of {steps}: after the reboot the store holds {got:?}, \
                 neither {before:?} nor {after:?}"
            );
            // Loading repairs nothing that changes the answer.
            let mut s = store(f);
            assert_eq!(block_on(s.load()).unwrap(), got, "{cut:?}: second boot");
            // And the store goes on working.
            block_on(s.save(&fresh.username, fresh.keys.as_ref())).unwrap();
            assert_eq!(
                block_on(s.load()).unwrap().as_ref(),
                Some(&fresh),
                "{cut:?}"
            );
        }
    }
    steps
}

/// Saves a sequence of records (enough to wrap around the pages twice, so
/// that pages fill, are closed, migrated and erased), cutting the power at
/// every step of each save, then forgets the keys likewise.
fn every_write_of_a_life<const W: usize, const E: usize>(pages: usize, saves: usize) {
    let mut flash = RamFlash::<W, E>::new(pages);
    let mut current: Option<Stored> = None;
    let mut total_steps = 0;
    let mut erases_seen = false;
    for i in 0..saves {
        let k = keys(
            &format!("password {i}"),
            &format!("salt{i:018}"),
            4096 + i as u32,
        );
        let next = Some(stored(&format!("sensor-{}", i % 3), Some(&k)));
        let op = Op::Save(next.as_ref().unwrap());
        total_steps += cut_everywhere(&flash, &current, &op, &next);
        let before_pages = flash.as_bytes().to_vec();
        flash.power_on();
        flash = save(flash, next.as_ref().unwrap());
        // A page that went from written back to erased: an erase happened.
        erases_seen |= before_pages
            .chunks(E)
            .zip(flash.as_bytes().chunks(E))
            .any(|(b, a)| b.iter().any(|&x| x != 0xFF) && a.iter().all(|&x| x == 0xFF));
        current = next;
    }
    assert!(
        erases_seen,
        "{saves} saves never erased a page: the test is too short"
    );
    let forgotten = Some(stored(&current.as_ref().unwrap().username, None));
    total_steps += cut_everywhere(&flash, &current, &Op::ForgetKeys, &forgotten);
    assert!(total_steps > 2 * saves as u64, "{total_steps} steps");
}

#[test]
fn power_cut_at_every_step_4_byte_words_1_kib_pages() {
    // STM32F4-like words; two pages hold about 10 records.
    every_write_of_a_life::<4, 1024>(2, 24);
}

#[test]
fn power_cut_at_every_step_1_byte_words_4_pages() {
    every_write_of_a_life::<1, 512>(4, 16);
}

#[test]
fn power_cut_at_every_step_32_byte_words() {
    // STM32H7-like 256-bit flash words.
    every_write_of_a_life::<32, 2048>(2, 24);
}

#[test]
fn erased_flash_holds_nothing_and_a_record_survives_a_reboot() {
    let flash = RamFlash::<4, 1024>::new(2);
    assert_eq!(load(&flash), None);
    let k = keys("wonderland", "W8ZxHXvUYrZMB2ce3tJeqs", 4096);
    let flash = save(flash, &stored("alice", Some(&k)));
    let got = load(&flash).unwrap();
    assert_eq!(got.username.as_str(), "alice");
    assert_eq!(got.keys.as_ref(), Some(&k));
    // Saving again replaces it.
    let k2 = keys("wonderland", "otherSALT", 600_000 / 100);
    let flash = save(flash, &stored("alice", Some(&k2)));
    assert_eq!(load(&flash).unwrap().keys, Some(k2));
}

#[test]
fn forget_keys_keeps_the_username() {
    let k = keys("wonderland", "W8ZxHXvUYrZMB2ce3tJeqs", 4096);
    let flash = save(RamFlash::<4, 1024>::new(2), &stored("alice", Some(&k)));
    let mut s = store(flash);
    block_on(s.forget_keys()).unwrap();
    assert_eq!(block_on(s.load()).unwrap(), Some(stored("alice", None)));
    // Twice is a no-op, and so is forgetting on an empty store.
    let steps = {
        let f = s.into_inner();
        let before = f.steps();
        let mut s = store(f);
        block_on(s.forget_keys()).unwrap();
        s.into_inner().steps() - before
    };
    assert_eq!(steps, 0, "forgetting forgotten keys wrote to flash");
    let mut empty = store(RamFlash::<4, 1024>::new(2));
    block_on(empty.forget_keys()).unwrap();
    assert_eq!(block_on(empty.load()).unwrap(), None);
}

#[test]
fn a_flipped_bit_in_the_newest_record_is_never_returned() {
    let a = stored("alice", Some(&keys("one", "saltA", 4096)));
    let b = stored("alice", Some(&keys("two", "saltB", 4096)));
    let flash = save(save(RamFlash::<4, 1024>::new(2), &a), &b);
    // B's record is the second occurrence of the username; its keys follow.
    let bytes = flash.as_bytes();
    let at = bytes
        .windows(5)
        .enumerate()
        .filter(|(_, w)| w == b"alice")
        .map(|(i, _)| i)
        .nth(1)
        .expect("two records");
    for offset in [0, 10, 40, 80] {
        let mut f = flash.clone();
        f.as_bytes_mut()[at + offset] ^= 0x04;
        let got = load(&f);
        assert_ne!(
            got.as_ref(),
            Some(&b),
            "flip at +{offset}: the corrupted record was used"
        );
        assert!(
            got.is_none() || got.as_ref() == Some(&a),
            "flip at +{offset}: got {got:?}"
        );
    }
}

#[test]
fn bad_ranges_and_long_usernames_are_refused() {
    let flash = RamFlash::<4, 1024>::new(4);
    // Not on a page boundary, and only one page.
    assert!(matches!(
        KeyStore::new(flash.clone(), 100..2048),
        Err(StorageError::Range(_))
    ));
    assert!(matches!(
        KeyStore::new(flash.clone(), 0..1024),
        Err(StorageError::Range(_))
    ));
    let mut s = store(flash);
    let long = "x".repeat(MAX_USERNAME_LEN + 1);
    assert_eq!(
        block_on(s.save(&long, None)),
        Err(StorageError::UsernameTooLong)
    );
    assert_eq!(s.into_inner().steps(), 0, "a refused save wrote to flash");
    // The longest username and a 64-byte salt fit the record buffer.
    let longest = "y".repeat(MAX_USERNAME_LEN);
    let salt = "s".repeat(64);
    let v = stored(&longest, Some(&keys("pw", &salt, 4096)));
    let f = save(RamFlash::<32, 2048>::new(2), &v);
    assert_eq!(load(&f), Some(v));
}

#[test]
fn a_record_of_another_format_is_reported_with_its_version() {
    // Write a valid record, then change its format byte and its CRC along
    // with it, as a future firmware would have written it: rebuild the
    // image with a map whose value starts with another version.
    use sequential_storage::cache::Cache;
    use sequential_storage::map::{MapConfig, MapStorage};

    let mut flash = RamFlash::<4, 1024>::new(2);
    {
        let mut map =
            MapStorage::<u8, _, _>::new(&mut flash, MapConfig::new(0..2048), Cache::new_uncached());
        let mut buf = [0u8; 64];
        let record: &[u8] = &[FORMAT + 1, 5, b'a', b'l', b'i', b'c', b'e', 0];
        block_on(map.store_item(&mut buf, &0u8, &record)).unwrap();
    }
    let mut s = store(flash);
    assert_eq!(
        block_on(s.load()),
        Err(StorageError::UnknownFormat(FORMAT + 1))
    );
    // A record of this version that is not a username and keys.
    let mut flash = RamFlash::<4, 1024>::new(2);
    {
        let mut map =
            MapStorage::<u8, _, _>::new(&mut flash, MapConfig::new(0..2048), Cache::new_uncached());
        let mut buf = [0u8; 64];
        let record: &[u8] = &[FORMAT, 0xFF, 0xFF, 0xFF];
        block_on(map.store_item(&mut buf, &0u8, &record)).unwrap();
    }
    let mut s = store(flash);
    assert_eq!(block_on(s.load()), Err(StorageError::Invalid));
}

#[test]
fn garbage_in_the_region_is_reported_not_used() {
    // A region that was never a key store (say, old firmware code).
    let image: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut s = store(RamFlash::<4, 1024>::from_image(image));
    match block_on(s.load()) {
        Ok(None) | Err(StorageError::Corrupted) => {}
        other => panic!("garbage gave {other:?}"),
    }
    // Erasing the region makes it usable.
    block_on(s.erase_all()).unwrap();
    block_on(s.save("alice", None)).unwrap();
    assert_eq!(block_on(s.load()).unwrap(), Some(stored("alice", None)));
}

#[test]
fn sha1_keys_and_records_with_trailing_bytes() {
    // 20-byte SCRAM-SHA-1 keys (feature sha1, on in tests) round-trip.
    let k = CachedKeys::derive(Mechanism::ScramSha1, "pw", b"saltsalt", 4096).unwrap();
    let v = stored("legacy", Some(&k));
    assert_eq!(load(&save(RamFlash::<4, 1024>::new(2), &v)), Some(v));

    // A record with a byte more than its fields is refused, not truncated.
    use sequential_storage::cache::Cache;
    use sequential_storage::map::{MapConfig, MapStorage};
    let mut flash = RamFlash::<4, 1024>::new(2);
    {
        let mut map =
            MapStorage::<u8, _, _>::new(&mut flash, MapConfig::new(0..2048), Cache::new_uncached());
        let mut buf = [0u8; 64];
        let record: &[u8] = &[FORMAT, 5, b'a', b'l', b'i', b'c', b'e', 0, 0];
        block_on(map.store_item(&mut buf, &0u8, &record)).unwrap();
    }
    let mut s = store(flash);
    assert_eq!(block_on(s.load()), Err(StorageError::Invalid));
}
