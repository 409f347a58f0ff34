//! FoundationDB's tuple encoding (the subset Relay needs) and subspaces.
//!
//! A tuple packs into bytes whose order is the order of the tuples, element by element, so a
//! range of keys is a range of tuples. Encoded like FDB's tuple layer: byte strings (`0x01`) and
//! UTF-8 strings (`0x02`) end in `0x00`, with each inner `0x00` written as `0x00 0xff`; integers
//! from `i64::MIN` to `u64::MAX` are a type code `0x14 ± n` followed by `n` big-endian bytes
//! (the ones' complement for negative numbers); versionstamps (`0x33`) are the 10-byte commit
//! versionstamp followed by a 2-byte user version ([`TupleVersionstamp`]). Tuples are flat:
//! nested tuples (`0x05`) and the other FDB types are not supported. Keys written here decode
//! with any FDB tuple layer.

use thiserror::Error;

use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, GroupId, RegionId};

use crate::engine::Versionstamp;
use crate::limits::VERSIONSTAMP_BYTES;

const BYTES_CODE: u8 = 0x01;
const STRING_CODE: u8 = 0x02;
const INTEGER_ZERO_CODE: u8 = 0x14;
const VERSIONSTAMP_CODE: u8 = 0x33;
const ESCAPE: u8 = 0xff;
/// Bytes reserved for a packed tuple (beyond a subspace's prefix) before encoding it, so that a
/// key is one allocation: the layers' keys are a few names and ids, under 64 bytes.
const TUPLE_BYTES_HINT: usize = 64;

/// Bytes that do not decode as the expected tuple.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TupleError {
    /// The bytes ended inside an element.
    #[error("tuple ended early")]
    UnexpectedEnd,
    /// An element of another type than expected.
    #[error("expected {expected}, found type code {code:#04x}")]
    UnexpectedType {
        /// The expected element type.
        expected: &'static str,
        /// The type code found.
        code: u8,
    },
    /// An integer that does not fit the expected integer type.
    #[error("integer out of range for {expected}")]
    IntegerOutOfRange {
        /// The expected integer type.
        expected: &'static str,
    },
    /// A string element that is not UTF-8.
    #[error("string element is not UTF-8")]
    InvalidUtf8,
    /// A byte string of another length than the expected fixed-size id.
    #[error("expected {expected} bytes, found {found}")]
    WrongLength {
        /// The expected length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// Bytes left after the last expected element.
    #[error("{0} bytes left after the tuple")]
    TrailingBytes(usize),
    /// A key outside the subspace it was unpacked with.
    #[error("key outside the subspace")]
    OutsideSubspace,
}

/// A value that packs as one or more tuple elements.
pub trait TupleEncode {
    /// Appends the encoded elements to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);
}

/// A value that unpacks from one or more tuple elements.
pub trait TupleDecode: Sized {
    /// Decodes the elements at the front of `input` and advances it past them.
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError>;
}

/// Packs a tuple into ordered bytes.
pub fn pack<T: TupleEncode + ?Sized>(tuple: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(TUPLE_BYTES_HINT);
    tuple.encode_into(&mut out);
    out
}

/// Unpacks bytes that hold exactly one tuple of type `T`.
pub fn unpack<T: TupleDecode>(mut bytes: &[u8]) -> Result<T, TupleError> {
    let tuple = T::decode_from(&mut bytes)?;
    if bytes.is_empty() {
        Ok(tuple)
    } else {
        Err(TupleError::TrailingBytes(bytes.len()))
    }
}

/// The names in a packed key: its string elements joined by `/`, as in `chat_log/entry`, which
/// say what kind of record the key holds whatever ids sit between them. Stops at the first
/// element that does not decode. For measurements and logs of what is written.
pub fn key_names(mut key: &[u8]) -> String {
    let mut names: Vec<String> = Vec::new();
    while let Some(&code) = key.first() {
        let skipped = match code {
            STRING_CODE => String::decode_from(&mut key).map(|name| names.push(name)),
            BYTES_CODE => decode_escaped(BYTES_CODE, "bytes", &mut key).map(drop),
            VERSIONSTAMP_CODE => TupleVersionstamp::decode_from(&mut key).map(drop),
            _ => decode_integer("integer", &mut key).map(drop),
        };
        if skipped.is_err() {
            break;
        }
    }
    names.join("/")
}

/// All the keys that start with one prefix, usually a packed tuple naming a layer and its part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subspace {
    prefix: Vec<u8>,
}

impl Subspace {
    /// The subspace of the keys starting with `tuple` packed.
    pub fn new<T: TupleEncode + ?Sized>(tuple: &T) -> Self {
        Subspace {
            prefix: pack(tuple),
        }
    }

    /// The subspace of the keys starting with raw `prefix` bytes.
    pub fn from_bytes(prefix: impl Into<Vec<u8>>) -> Self {
        Subspace {
            prefix: prefix.into(),
        }
    }

    /// The subspace of this one extended by `tuple`.
    pub fn subspace<T: TupleEncode + ?Sized>(&self, tuple: &T) -> Subspace {
        Subspace {
            prefix: self.pack(tuple),
        }
    }

    /// The key of `tuple` in this subspace.
    pub fn pack<T: TupleEncode + ?Sized>(&self, tuple: &T) -> Vec<u8> {
        // One allocation: a clone of the prefix would have its exact length and grow on the
        // first element.
        let mut key = Vec::with_capacity(self.prefix.len() + TUPLE_BYTES_HINT);
        key.extend_from_slice(&self.prefix);
        tuple.encode_into(&mut key);
        key
    }

    /// The tuple of a key of this subspace.
    pub fn unpack<T: TupleDecode>(&self, key: &[u8]) -> Result<T, TupleError> {
        let rest = key
            .strip_prefix(self.prefix.as_slice())
            .ok_or(TupleError::OutsideSubspace)?;
        unpack(rest)
    }

    /// The range `[begin, end)` holding every tuple key of this subspace (not the bare prefix).
    pub fn range(&self) -> (Vec<u8>, Vec<u8>) {
        let mut begin = self.prefix.clone();
        begin.push(0x00);
        let mut end = self.prefix.clone();
        end.push(0xff);
        (begin, end)
    }

    /// Whether `key` starts with this subspace's prefix.
    pub fn contains(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The prefix.
    pub fn bytes(&self) -> &[u8] {
        &self.prefix
    }
}

// ---------------------------------------------------------------------------------------------
// Elements

fn encode_escaped(code: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    out.push(code);
    if bytes.contains(&0x00) {
        for &byte in bytes {
            out.push(byte);
            if byte == 0x00 {
                out.push(ESCAPE);
            }
        }
    } else {
        // Names and most ids hold no zero byte: copied at once.
        out.extend_from_slice(bytes);
    }
    out.push(0x00);
}

fn decode_escaped(
    code: u8,
    expected: &'static str,
    input: &mut &[u8],
) -> Result<Vec<u8>, TupleError> {
    let (&found, mut rest) = input.split_first().ok_or(TupleError::UnexpectedEnd)?;
    if found != code {
        return Err(TupleError::UnexpectedType {
            expected,
            code: found,
        });
    }
    let mut bytes = Vec::new();
    loop {
        let (&byte, after) = rest.split_first().ok_or(TupleError::UnexpectedEnd)?;
        rest = after;
        if byte != 0x00 {
            bytes.push(byte);
        } else if rest.first() == Some(&ESCAPE) {
            bytes.push(0x00);
            rest = &rest[1..];
        } else {
            *input = rest;
            return Ok(bytes);
        }
    }
}

/// Encodes an integer in `i64::MIN..=u64::MAX`.
fn encode_integer(value: i128, out: &mut Vec<u8>) {
    let magnitude = value.unsigned_abs() as u64;
    let length = (8 - magnitude.leading_zeros() as usize / 8) as u8;
    if value >= 0 {
        out.push(INTEGER_ZERO_CODE + length);
        out.extend_from_slice(&magnitude.to_be_bytes()[8 - length as usize..]);
    } else {
        out.push(INTEGER_ZERO_CODE - length);
        out.extend_from_slice(&(!magnitude).to_be_bytes()[8 - length as usize..]);
    }
}

fn decode_integer(expected: &'static str, input: &mut &[u8]) -> Result<i128, TupleError> {
    let (&code, rest) = input.split_first().ok_or(TupleError::UnexpectedEnd)?;
    if !(INTEGER_ZERO_CODE - 8..=INTEGER_ZERO_CODE + 8).contains(&code) {
        return Err(TupleError::UnexpectedType { expected, code });
    }
    let length = usize::from(code.abs_diff(INTEGER_ZERO_CODE));
    if rest.len() < length {
        return Err(TupleError::UnexpectedEnd);
    }
    let mut word = [0u8; 8];
    word[8 - length..].copy_from_slice(&rest[..length]);
    let stored = u64::from_be_bytes(word);
    *input = &rest[length..];
    if code >= INTEGER_ZERO_CODE {
        Ok(i128::from(stored))
    } else {
        // The ones' complement within `length` bytes.
        let mask = if length == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * length)) - 1
        };
        Ok(-i128::from(!stored & mask))
    }
}

impl TupleEncode for [u8] {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_escaped(BYTES_CODE, self, out);
    }
}

impl TupleEncode for Vec<u8> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_escaped(BYTES_CODE, self, out);
    }
}

impl TupleDecode for Vec<u8> {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        decode_escaped(BYTES_CODE, "byte string", input)
    }
}

impl<const N: usize> TupleEncode for [u8; N] {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_escaped(BYTES_CODE, self, out);
    }
}

impl<const N: usize> TupleDecode for [u8; N] {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        let bytes = decode_escaped(BYTES_CODE, "byte string", input)?;
        let found = bytes.len();
        <[u8; N]>::try_from(bytes).map_err(|_| TupleError::WrongLength { expected: N, found })
    }
}

impl TupleEncode for str {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_escaped(STRING_CODE, self.as_bytes(), out);
    }
}

impl TupleEncode for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_escaped(STRING_CODE, self.as_bytes(), out);
    }
}

impl TupleDecode for String {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        let bytes = decode_escaped(STRING_CODE, "string", input)?;
        String::from_utf8(bytes).map_err(|_| TupleError::InvalidUtf8)
    }
}

macro_rules! integer_element {
    ($($integer:ty),*) => {$(
        impl TupleEncode for $integer {
            fn encode_into(&self, out: &mut Vec<u8>) {
                encode_integer(i128::from(*self), out);
            }
        }

        impl TupleDecode for $integer {
            fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
                let expected = stringify!($integer);
                let value = decode_integer(expected, input)?;
                <$integer>::try_from(value).map_err(|_| TupleError::IntegerOutOfRange { expected })
            }
        }
    )*};
}

integer_element!(u8, u16, u32, u64, i32, i64);

impl<T: TupleEncode + ?Sized> TupleEncode for &T {
    fn encode_into(&self, out: &mut Vec<u8>) {
        (**self).encode_into(out);
    }
}

impl TupleEncode for () {
    fn encode_into(&self, _out: &mut Vec<u8>) {}
}

impl TupleDecode for () {
    fn decode_from(_input: &mut &[u8]) -> Result<Self, TupleError> {
        Ok(())
    }
}

macro_rules! tuple_impls {
    ($($name:ident)+) => {
        impl<$($name: TupleEncode),+> TupleEncode for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode_into(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode_into(out);)+
            }
        }

        impl<$($name: TupleDecode),+> TupleDecode for ($($name,)+) {
            fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
                Ok(($($name::decode_from(input)?,)+))
            }
        }
    };
}

tuple_impls!(A);
tuple_impls!(A B);
tuple_impls!(A B C);
tuple_impls!(A B C D);
tuple_impls!(A B C D E);
tuple_impls!(A B C D E F);

/// FoundationDB's tuple versionstamp (type `0x33`): a commit's [`Versionstamp`] and a user
/// version that orders several writes of one transaction. Keys holding one sort in commit order,
/// then user-version order. A key is written with an *incomplete* one (zero stamp bytes) through
/// `set_versionstamped_key` at [`TupleVersionstamp::stamp_offset`]; the engine fills the stamp
/// in at commit, the user version stays as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TupleVersionstamp {
    /// The commit's versionstamp.
    pub stamp: Versionstamp,
    /// The order of the write within its transaction.
    pub user_version: u16,
}

impl TupleVersionstamp {
    /// Bytes an encoded versionstamp takes: the type code, 10 stamp bytes, 2 user bytes.
    pub const ENCODED_BYTES: usize = 1 + VERSIONSTAMP_BYTES + 2;

    /// An incomplete versionstamp: the engine fills the stamp in at commit.
    pub fn incomplete(user_version: u16) -> Self {
        TupleVersionstamp {
            stamp: Versionstamp::from_bytes([0; VERSIONSTAMP_BYTES]),
            user_version,
        }
    }

    /// Where the stamp of a versionstamp packed right after `prefix` bytes sits in the key.
    pub fn stamp_offset(prefix: usize) -> usize {
        prefix + 1
    }
}

impl TupleEncode for TupleVersionstamp {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(VERSIONSTAMP_CODE);
        out.extend_from_slice(self.stamp.as_bytes());
        out.extend_from_slice(&self.user_version.to_be_bytes());
    }
}

impl TupleDecode for TupleVersionstamp {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        let (&code, rest) = input.split_first().ok_or(TupleError::UnexpectedEnd)?;
        if code != VERSIONSTAMP_CODE {
            return Err(TupleError::UnexpectedType {
                expected: "versionstamp",
                code,
            });
        }
        if rest.len() < VERSIONSTAMP_BYTES + 2 {
            return Err(TupleError::UnexpectedEnd);
        }
        let (stamp, rest) = rest.split_at(VERSIONSTAMP_BYTES);
        let (user, rest) = rest.split_at(2);
        let stamp = Versionstamp::read_at(stamp, 0).ok_or(TupleError::UnexpectedEnd)?;
        *input = rest;
        Ok(TupleVersionstamp {
            stamp,
            user_version: u16::from_be_bytes([user[0], user[1]]),
        })
    }
}

// Relay's ids pack as their numbers or bytes, so keys sort by id.

macro_rules! id_element {
    ($($id:ty => $inner:ty),*) => {$(
        impl TupleEncode for $id {
            fn encode_into(&self, out: &mut Vec<u8>) {
                self.0.encode_into(out);
            }
        }

        impl TupleDecode for $id {
            fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
                <$inner>::decode_from(input).map(Self)
            }
        }
    )*};
}

id_element!(
    AccountId => u64,
    DeviceId => u32,
    GroupId => u64,
    RegionId => u32,
    ChatId => [u8; 16],
    ClientMessageId => [u8; 16]
);

/// A device address packs as two elements: its account, then its device number.
impl TupleEncode for DeviceAddress {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.account.encode_into(out);
        self.device.encode_into(out);
    }
}

impl TupleDecode for DeviceAddress {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        Ok(DeviceAddress {
            account: AccountId::decode_from(input)?,
            device: DeviceId::decode_from(input)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_the_string_elements_of_a_key() {
        let key = pack(&("chat_log", ChatId([0; 16]), "entry", 7u64, 0u32, 1u32));
        assert_eq!(key_names(&key), "chat_log/entry");
        let device = DeviceAddress {
            account: AccountId(3),
            device: DeviceId(1),
        };
        assert_eq!(
            key_names(&pack(&("device_queue", device, "latest"))),
            "device_queue/latest"
        );
        assert_eq!(
            key_names(&[0x02, b'x']),
            "",
            "a string without its end is not a name"
        );
    }

    /// Values of every supported type, in the order their encodings must sort.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Element {
        Bytes(Vec<u8>),
        Text(String),
        Integer(i128),
    }

    impl Element {
        fn pack(&self) -> Vec<u8> {
            let mut out = Vec::new();
            match self {
                Element::Bytes(bytes) => bytes.encode_into(&mut out),
                Element::Text(text) => text.encode_into(&mut out),
                Element::Integer(value) => encode_integer(*value, &mut out),
            }
            out
        }
    }

    fn interesting_integers() -> Vec<i128> {
        let mut values = vec![i128::from(i64::MIN), i128::from(u64::MAX), 0, 1, -1];
        for shift in 0..64 {
            let power = 1i128 << shift;
            for value in [power - 1, power, power + 1, -power + 1, -power, -power - 1] {
                if (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&value) {
                    values.push(value);
                }
            }
        }
        values
    }

    fn interesting_bytes() -> Vec<Vec<u8>> {
        let mut values = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 1],
            vec![0, 0xff],
            vec![0xff],
        ];
        let mut state = 7u64;
        for _ in 0..200 {
            state = crate::test_support::split_mix(state);
            let length = (state % 6) as usize;
            let alphabet = [0x00, 0x01, 0x7f, 0xfe, 0xff];
            let bytes = (0..length)
                .map(|i| alphabet[((state >> (8 * i + 3)) % alphabet.len() as u64) as usize])
                .collect();
            values.push(bytes);
        }
        values
    }

    #[test]
    fn encoded_order_matches_value_order() {
        let mut elements: Vec<Element> = interesting_integers()
            .into_iter()
            .map(Element::Integer)
            .chain(interesting_bytes().into_iter().map(Element::Bytes))
            .chain(
                ["", "\0", "a", "a\0", "a\0b", "ab", "b", "é", "\u{10ffff}"]
                    .into_iter()
                    .map(|text| Element::Text(text.to_owned())),
            )
            .collect();
        elements.sort();
        elements.dedup();
        for pair in elements.windows(2) {
            assert!(
                pair[0].pack() < pair[1].pack(),
                "{:?} must sort before {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn tuples_sort_element_by_element() {
        let tuples = [
            (0u64, "z"),
            (1, ""),
            (1, "a"),
            (1, "a\0"),
            (1, "b"),
            (256, ""),
        ];
        for pair in tuples.windows(2) {
            assert!(
                pack(&pair[0]) < pack(&pair[1]),
                "{:?} < {:?}",
                pair[0],
                pair[1]
            );
        }
        // A prefix tuple sorts before its extensions and inside its subspace's range.
        let subspace = Subspace::new(&("chat", 7u64));
        let (begin, end) = subspace.range();
        let key = subspace.pack(&(0u64, vec![0xffu8]));
        assert!(begin <= key && key < end);
        assert!(subspace.bytes() < begin.as_slice());
    }

    #[test]
    fn round_trips() {
        for value in interesting_integers() {
            let mut input = &Element::Integer(value).pack()[..];
            assert_eq!(decode_integer("test", &mut input), Ok(value));
            assert!(input.is_empty());
        }
        for bytes in interesting_bytes() {
            assert_eq!(unpack::<Vec<u8>>(&pack(&bytes)), Ok(bytes));
        }
        let address = DeviceAddress {
            account: AccountId(42),
            device: DeviceId(3),
        };
        let chat = ChatId([0; 16]);
        let key = pack(&(chat, address, "text", -5i64, u64::MAX));
        assert_eq!(
            unpack::<(ChatId, DeviceAddress, String, i64, u64)>(&key),
            Ok((chat, address, "text".to_owned(), -5, u64::MAX))
        );
    }

    #[test]
    fn matches_foundationdb_reference_encodings() {
        // From FoundationDB's tuple layer specification.
        assert_eq!(pack(&b"foo\x00bar".as_slice()), b"\x01foo\x00\xffbar\x00");
        assert_eq!(pack("F\u{d4}O\u{0}bar"), b"\x02F\xc3\x94O\x00\xffbar\x00");
        assert_eq!(pack(&-5551212i64), b"\x11\xabK\x93");
        assert_eq!(pack(&0u64), b"\x14");
        assert_eq!(pack(&1u64), b"\x15\x01");
        assert_eq!(pack(&-1i64), b"\x13\xfe");
        assert_eq!(pack(&u64::MAX), b"\x1c\xff\xff\xff\xff\xff\xff\xff\xff");
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(unpack::<u64>(b""), Err(TupleError::UnexpectedEnd));
        assert_eq!(unpack::<u64>(b"\x16\x01"), Err(TupleError::UnexpectedEnd));
        assert_eq!(
            unpack::<u32>(&pack(&u64::MAX)),
            Err(TupleError::IntegerOutOfRange { expected: "u32" })
        );
        assert_eq!(
            unpack::<u64>(&pack(&-1i64)),
            Err(TupleError::IntegerOutOfRange { expected: "u64" })
        );
        assert!(matches!(
            unpack::<u64>(b"\x01a\x00"),
            Err(TupleError::UnexpectedType { .. })
        ));
        assert_eq!(
            unpack::<Vec<u8>>(b"\x01abc"),
            Err(TupleError::UnexpectedEnd)
        );
        assert_eq!(
            unpack::<String>(b"\x02\xff\x00"),
            Err(TupleError::InvalidUtf8)
        );
        assert_eq!(
            unpack::<ChatId>(&pack(&[1u8; 15])),
            Err(TupleError::WrongLength {
                expected: 16,
                found: 15
            })
        );
        assert_eq!(
            unpack::<u64>(b"\x15\x01\x00"),
            Err(TupleError::TrailingBytes(1))
        );
        assert_eq!(
            Subspace::new("a").unpack::<u64>(b"\x02b\x00\x14"),
            Err(TupleError::OutsideSubspace)
        );
    }

    #[test]
    fn versionstamps_pack_in_commit_then_user_order_and_round_trip() {
        let stamp = |version: u64, order: u16, user: u16| TupleVersionstamp {
            stamp: Versionstamp::new(version, order),
            user_version: user,
        };
        let ordered = [
            stamp(1, 0, 0),
            stamp(1, 0, 1),
            stamp(1, 1, 0),
            stamp(2, 0, 0),
        ];
        let packed: Vec<Vec<u8>> = ordered.iter().map(|s| pack(&(7u32, *s, 3u32))).collect();
        assert!(packed.windows(2).all(|pair| pair[0] < pair[1]));
        for (tuple, bytes) in ordered.iter().zip(&packed) {
            assert_eq!(
                unpack::<(u32, TupleVersionstamp, u32)>(bytes),
                Ok((7, *tuple, 3))
            );
        }
        let prefix = pack(&(7u32,));
        let incomplete = pack(&(7u32, TupleVersionstamp::incomplete(9)));
        let offset = TupleVersionstamp::stamp_offset(prefix.len());
        assert_eq!(incomplete[offset - 1], VERSIONSTAMP_CODE);
        assert_eq!(
            &incomplete[offset..offset + VERSIONSTAMP_BYTES],
            &[0; VERSIONSTAMP_BYTES]
        );
        assert_eq!(
            unpack::<(u32, TupleVersionstamp)>(&incomplete[..offset]),
            Err(TupleError::UnexpectedEnd)
        );
    }
}
