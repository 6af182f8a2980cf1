//! RFC 9162 (Certificate Transparency v2) Merkle tree math; the tree is the same as RFC 6962's.
//!
//! The service stores every complete, aligned subtree hash as a [`NodeId`] and never recomputes a
//! subtree once it is complete. Proof generation is therefore split in two: a *plan* names the
//! stored nodes each proof element needs (so the database can fetch them all in one query), and
//! [`assemble`] turns the fetched hashes into the proof. Verification follows the RFC's iterative
//! algorithms literally, because third parties will compare our verifier against the RFC text.
//!
//! Every subtree that RFC 9162's recursive definitions (MTH, PATH, PROOF) ever hash is a range
//! `[start, end)` whose start is a multiple of the smallest power of two `>= end - start`. Such a
//! range splits into the complete aligned subtrees given by the binary digits of its length,
//! largest first; [`range_nodes`] lists them and [`combine`] hashes them back together.

use std::fmt;

use aws_lc_rs::digest::{Context, SHA256};

/// A SHA-256 output: a leaf hash, an interior node hash or a tree head.
pub type Hash = [u8; 32];

/// Domain separation from RFC 9162 §2.1.1, so a leaf can never be passed off as an interior node.
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of a leaf's entry bytes: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[LEAF_PREFIX], data])
}

/// The hash of an interior node from its children: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[NODE_PREFIX], left, right])
}

/// The Merkle Tree Hash of the empty tree, which RFC 9162 defines as the SHA-256 of no bytes.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Coordinates of a stored complete subtree: it covers leaves `[index * 2^level, (index + 1) * 2^level)`,
/// and level 0 nodes are the leaf hashes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves; a node at `level` covers `2^level` leaves.
    pub level: u8,
    /// Position among the nodes of the same level, counted from the left.
    pub index: u64,
}

/// Why a Merkle computation or verification failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The leaf index is not below the tree size (this includes every index in an empty tree).
    IndexOutOfRange,
    /// The tree sizes (or a size and a hash count) do not form a combination a proof or frontier exists for.
    BadSizes,
    /// The leaf range is empty or is not one of the subtrees RFC 9162's recursion hashes (see [`range_nodes`]).
    BadRange,
    /// The proof has more or fewer hashes than the sizes call for.
    WrongProofLength,
    /// The proof leads to a root other than the expected (new) root.
    RootMismatch,
    /// A consistency proof leads to an old root other than the expected one.
    OldRootMismatch,
    /// Storage has no hash for a node a plan needs, which means the tree is not built that far.
    MissingNode(NodeId),
    /// The tree already holds `u64::MAX` leaves, the most its size can count.
    TreeFull,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::IndexOutOfRange => f.write_str("leaf index is not below the tree size"),
            Error::BadSizes => f.write_str("tree sizes are not a valid combination"),
            Error::BadRange => f.write_str("leaf range is not a subtree of RFC 9162's recursion"),
            Error::WrongProofLength => f.write_str("proof has the wrong number of hashes for the tree sizes"),
            Error::RootMismatch => f.write_str("proof does not lead to the expected root"),
            Error::OldRootMismatch => f.write_str("consistency proof does not lead to the expected old root"),
            Error::MissingNode(id) => write!(f, "no stored hash for node level {} index {}", id.level, id.index),
            Error::TreeFull => f.write_str("tree cannot hold more than u64::MAX leaves"),
        }
    }
}

impl std::error::Error for Error {}

/// RFC 9162's `k`: the largest power of two strictly smaller than `n`, for `n >= 2`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The binary-digit decomposition of a range already known to be one of RFC 9162's subtrees.
fn decompose(start: u64, end: u64) -> Vec<NodeId> {
    let len = end - start;
    let mut nodes = Vec::with_capacity(len.count_ones() as usize);
    let mut pos = start;
    for level in (0..64u8).rev() {
        if (len >> level) & 1 == 1 {
            nodes.push(NodeId {
                level,
                index: pos >> level,
            });
            pos += 1 << level;
        }
    }
    nodes
}

/// The stored subtrees whose hashes [`combine`] into `MTH(D[start:end])`, left to right (largest first).
///
/// Accepted ranges are exactly those RFC 9162's recursive definitions can reach: `end > start`
/// and `start` a multiple of the smallest power of two `>= end - start` (for lengths above
/// `2^63` that power is `2^64`, so `start` must be 0). Within such a range, the RFC's split
/// point always falls on a power-of-two boundary, which is what makes each piece a stored
/// aligned node. Any other range yields [`Error::BadRange`].
pub fn range_nodes(start: u64, end: u64) -> Result<Vec<NodeId>, Error> {
    if end <= start {
        return Err(Error::BadRange);
    }
    let aligned = match (end - start).checked_next_power_of_two() {
        Some(block) => start.is_multiple_of(block),
        None => start == 0,
    };
    if !aligned {
        return Err(Error::BadRange);
    }
    Ok(decompose(start, end))
}

/// Hashes the node hashes of one [`range_nodes`] result (in the same order) into the range's MTH.
///
/// The fold runs right to left because RFC 9162 splits off the largest power of two on the left
/// and recurses into the remainder, so the smaller right-hand subtrees are joined first. An empty
/// slice gives [`empty_root`], the MTH of no leaves, so `combine` of a [`root_plan`]`(0)` lookup is
/// still the right tree head.
pub fn combine(hashes: &[Hash]) -> Hash {
    match hashes.split_last() {
        None => empty_root(),
        Some((last, rest)) => rest.iter().rev().fold(*last, |acc, left| node_hash(left, &acc)),
    }
}

/// The stored nodes for the tree head of a tree with `size` leaves: `range_nodes(0, size)`, empty for size 0.
pub fn root_plan(size: u64) -> Vec<NodeId> {
    if size == 0 { Vec::new() } else { decompose(0, size) }
}

/// The stored nodes for the inclusion proof of leaf `index` in a tree of `size` leaves.
///
/// One entry per proof hash, in RFC 9162 §2.1.3.1 `PATH(m, D[n])` order (the leaf's sibling
/// first, the root's child last); each entry is the [`range_nodes`] of that sibling subtree.
pub fn inclusion_proof_plan(index: u64, size: u64) -> Result<Vec<Vec<NodeId>>, Error> {
    if index >= size {
        return Err(Error::IndexOutOfRange);
    }
    // Walk the recursion from the root down; PATH appends each sibling after the deeper part, so
    // the top-down list is reversed at the end.
    let (mut lo, mut hi) = (0, size);
    let mut siblings = Vec::new();
    while hi - lo > 1 {
        let mid = lo + split(hi - lo);
        if index < mid {
            siblings.push(decompose(mid, hi));
            hi = mid;
        } else {
            siblings.push(decompose(lo, mid));
            lo = mid;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// The stored nodes for the consistency proof from a tree of `old_size` leaves to one of `new_size`.
///
/// One entry per proof hash, in RFC 9162 §2.1.4.1 `PROOF(m, D[n])` order; empty when the sizes
/// are equal. RFC 9162 leaves `m = 0` undefined, so `old_size == 0` is [`Error::BadSizes`] here
/// rather than an invented proof; [`verify_consistency`] accepts an empty tree without a proof.
/// `old_size > new_size` is [`Error::BadSizes`] too.
pub fn consistency_proof_plan(old_size: u64, new_size: u64) -> Result<Vec<Vec<NodeId>>, Error> {
    if old_size == 0 || old_size > new_size {
        return Err(Error::BadSizes);
    }
    let (mut lo, mut hi) = (0, new_size);
    // The RFC's `b`: while true, the old tree is the left edge of the current subtree and the
    // verifier already holds its hash, so it is left out of the proof.
    let mut old_is_known = true;
    let mut elements = Vec::new();
    while hi != old_size {
        let mid = lo + split(hi - lo);
        if old_size <= mid {
            elements.push(decompose(mid, hi));
            hi = mid;
        } else {
            elements.push(decompose(lo, mid));
            lo = mid;
            old_is_known = false;
        }
    }
    if !old_is_known {
        elements.push(decompose(lo, hi));
    }
    elements.reverse();
    Ok(elements)
}

/// Runs a plan against a node lookup and returns the proof hashes, one per plan entry.
///
/// `lookup` returning `None` becomes [`Error::MissingNode`] for that node, so a caller can tell a
/// tree that is not built that far from a bad proof.
pub fn assemble(plan: &[Vec<NodeId>], mut lookup: impl FnMut(NodeId) -> Option<Hash>) -> Result<Vec<Hash>, Error> {
    plan.iter()
        .map(|element| {
            let hashes = element
                .iter()
                .map(|&id| lookup(id).ok_or(Error::MissingNode(id)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(combine(&hashes))
        })
        .collect()
}

/// The inclusion proofs of several leaves of one tree, planned together so a store reads
/// each missing node once: plan, read [`InclusionBatch::missing`], then assemble.
#[derive(Debug, Clone)]
pub struct InclusionBatch {
    plans: Vec<Vec<Vec<NodeId>>>,
}

impl InclusionBatch {
    /// Plans the proofs of leaves `indices` in a tree of `size` leaves.
    pub fn plan(indices: impl IntoIterator<Item = u64>, size: u64) -> Result<Self, Error> {
        let plans = indices
            .into_iter()
            .map(|index| inclusion_proof_plan(index, size))
            .collect::<Result<_, _>>()?;
        Ok(Self { plans })
    }

    /// The nodes the proofs need that `known` lacks, sorted, each once.
    pub fn missing(&self, known: &std::collections::HashMap<NodeId, Hash>) -> Vec<NodeId> {
        let mut missing: Vec<NodeId> = self
            .plans
            .iter()
            .flatten()
            .flatten()
            .filter(|id| !known.contains_key(id))
            .copied()
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// The proofs, in the order of the planned indices.
    pub fn assemble(&self, known: &std::collections::HashMap<NodeId, Hash>) -> Result<Vec<Vec<Hash>>, Error> {
        self.plans
            .iter()
            .map(|plan| assemble(plan, |id| known.get(&id).copied()))
            .collect()
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with head `root`, by RFC 9162 §2.1.3.2.
///
/// The proof binds the index and the shape of the path, not the size by itself: sizes whose
/// paths have the same shape accept the same proof, so the size must come from the same signed
/// checkpoint as `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), Error> {
    if index >= size {
        return Err(Error::IndexOutOfRange);
    }
    // `fn_` and `sn` are the RFC's `fn` and `sn`: the node's and the last node's positions on the current level.
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(Error::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // A last node without a right sibling moves up unchanged until it is a right child,
            // which is the level `p` belongs to. (For odd `fn` this loop does nothing, as in the RFC.)
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(Error::WrongProofLength);
    }
    if r != *root {
        return Err(Error::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with head `new_root` extends the tree of `old_size`
/// leaves with head `old_root`, by RFC 9162 §2.1.4.2.
///
/// Cases the RFC leaves open are settled so that nothing unprovable is accepted:
/// - `old_size > new_size` is [`Error::BadSizes`].
/// - `old_size == 0`: the empty tree is a prefix of every tree, so the proof must be empty and
///   `old_root` must be [`empty_root`] (and `new_root` too when `new_size == 0`).
/// - `old_size == new_size`: the proof must be empty and the roots equal.
///
/// As with [`verify_inclusion`], `new_size` is bound only through the shape of the proof (some
/// neighbouring sizes accept the same proof), so it must come from the same signed checkpoint as
/// `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), Error> {
    if old_size > new_size {
        return Err(Error::BadSizes);
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(Error::WrongProofLength);
        }
        if old_size == 0 && *old_root != empty_root() {
            return Err(Error::OldRootMismatch);
        }
        if old_size == new_size && old_root != new_root {
            return Err(Error::RootMismatch);
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(Error::WrongProofLength);
    }
    // PROOF omits the old root when the old tree is a complete subtree, because the verifier has it.
    let known_old = old_size.is_power_of_two().then_some(old_root);
    let mut path = known_old.into_iter().chain(proof);
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some(first) = path.next() else {
        return Err(Error::WrongProofLength);
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if sn == 0 {
            return Err(Error::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(Error::WrongProofLength);
    }
    if fr != *old_root {
        return Err(Error::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(Error::RootMismatch);
    }
    Ok(())
}

/// The right edge of the tree (a "compact range" over `[0, size)`), enough to append leaves and
/// compute the tree head without reading anything else back.
///
/// It holds one hash per set bit of `size`: the complete subtrees of [`root_plan`]`(size)`, left
/// to right, so at most 64 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a frontier from stored nodes: `hashes` are the hashes of [`root_plan`]`(size)`, in order.
    ///
    /// A hash count other than the number of set bits of `size` is [`Error::BadSizes`]; the hashes
    /// themselves cannot be checked here.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, Error> {
        if hashes.len() != size.count_ones() as usize {
            return Err(Error::BadSizes);
        }
        Ok(Self { size, hashes })
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes of [`root_plan`]`(self.size())`, left to right.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends a leaf hash and returns every node completed by it, bottom up, so they can be stored:
    /// the leaf itself at level 0, then each parent up to the largest subtree now ending at the new size.
    ///
    /// Fails with [`Error::TreeFull`] when the size would overflow `u64`, which only a frontier
    /// restored at `u64::MAX` can reach.
    pub fn push(&mut self, leaf: Hash) -> Result<Vec<(NodeId, Hash)>, Error> {
        if self.size == u64::MAX {
            return Err(Error::TreeFull);
        }
        // Like a binary increment: each trailing one bit of the size is a complete left sibling
        // that the new leaf's subtree now merges with. Those are the last hashes held, since the
        // hashes track the set bits from the most significant down.
        let carries = self.size.trailing_ones() as usize;
        let lefts = self.hashes.split_off(self.hashes.len() - carries);
        let mut index = self.size;
        let mut hash = leaf;
        let mut formed = Vec::with_capacity(carries + 1);
        formed.push((NodeId { level: 0, index }, hash));
        for (level, left) in (1u8..).zip(lefts.iter().rev()) {
            hash = node_hash(left, &hash);
            index >>= 1;
            formed.push((NodeId { level, index }, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        Ok(formed)
    }

    /// The tree head of the current size; [`empty_root`] for the empty tree.
    pub fn root(&self) -> Hash {
        combine(&self.hashes)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_batch_of_proofs_names_what_it_lacks_once_and_verifies() {
        let mut frontier = Frontier::new();
        let mut nodes = std::collections::HashMap::new();
        for i in 0..13u8 {
            nodes.extend(frontier.push(leaf_hash(&[i])).unwrap());
        }
        let batch = InclusionBatch::plan([0, 5, 12], 13).unwrap();
        assert!(batch.missing(&nodes).is_empty());
        let lacking = batch.missing(&std::collections::HashMap::new());
        assert!(lacking.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        let proofs = batch.assemble(&nodes).unwrap();
        for (index, proof) in [0u64, 5, 12].into_iter().zip(&proofs) {
            verify_inclusion(index, 13, &leaf_hash(&[index as u8]), proof, &frontier.root()).unwrap();
        }
        assert!(InclusionBatch::plan([13], 13).is_err());
    }

    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn h(s: &str) -> Hash {
        unhex(s).try_into().expect("32-byte hash")
    }

    // RFC 6962 test vectors as published by transparency-dev/merkle (testonly/constants.go and
    // proof/verify_test.go), the data Google's CT implementations test against.
    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// Tree heads for sizes 0..=8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Every complete subtree of the 8-leaf tree, by level then index.
    const NODE_HASHES: [&[&str]; 4] = [
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ],
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];

    /// Published inclusion proofs: (0-based leaf index, tree size, proof). The source lists
    /// 1-based leaf numbers; they are converted here.
    const INCLUSION_VECTORS: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// Published consistency proofs: (old size, new size, proof).
    const CONSISTENCY_VECTORS: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn hashes(hex: &[&str]) -> Vec<Hash> {
        hex.iter().map(|s| h(s)).collect()
    }

    /// RFC 9162's `k` computed the slow, obvious way, independent of the module's bit trick.
    fn reference_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// MTH, PATH and PROOF written straight from RFC 9162's recursive definitions (§2.1.1,
    /// §2.1.3.1, §2.1.4.1) over leaf hashes, with MTH memoised so that exhaustive checks stay fast.
    struct Reference {
        leaves: Vec<Hash>,
        memo: RefCell<HashMap<(usize, usize), Hash>>,
    }

    impl Reference {
        fn new(leaves: Vec<Hash>) -> Self {
            Self {
                leaves,
                memo: RefCell::new(HashMap::new()),
            }
        }

        /// MTH(D[start:end]).
        fn mth(&self, start: usize, end: usize) -> Hash {
            let n = end - start;
            if n == 0 {
                return empty_root();
            }
            if n == 1 {
                return self.leaves[start];
            }
            if let Some(hash) = self.memo.borrow().get(&(start, end)) {
                return *hash;
            }
            let k = reference_split(n);
            let hash = node_hash(&self.mth(start, start + k), &self.mth(start + k, end));
            self.memo.borrow_mut().insert((start, end), hash);
            hash
        }

        /// PATH(m, D[start:end]) with `m` relative to `start`.
        fn path(&self, m: usize, start: usize, end: usize) -> Vec<Hash> {
            let n = end - start;
            if n == 1 {
                return Vec::new();
            }
            let k = reference_split(n);
            if m < k {
                let mut p = self.path(m, start, start + k);
                p.push(self.mth(start + k, end));
                p
            } else {
                let mut p = self.path(m - k, start + k, end);
                p.push(self.mth(start, start + k));
                p
            }
        }

        /// For PATH(m, D[start:end]): whether each sibling is on the left, in proof order. Two
        /// (index, size) pairs with the same sides hash the same way, so their proofs are interchangeable.
        fn path_sides(m: usize, start: usize, end: usize) -> Vec<bool> {
            let n = end - start;
            if n == 1 {
                return Vec::new();
            }
            let k = reference_split(n);
            if m < k {
                let mut p = Self::path_sides(m, start, start + k);
                p.push(false);
                p
            } else {
                let mut p = Self::path_sides(m - k, start + k, end);
                p.push(true);
                p
            }
        }

        /// For PROOF(m, D[n]): whether the old tree is a complete left-edge subtree the verifier
        /// already holds (SUBPROOF ends with `b` true), and whether each proof hash is a left
        /// sibling, in proof order. Equal shapes make the RFC verifier do identical hashing.
        fn proof_shape(m: usize, n: usize) -> (bool, Vec<bool>) {
            fn sub(m: usize, n: usize, b: bool) -> (bool, Vec<bool>) {
                if m == n {
                    return (b, Vec::new());
                }
                let k = reference_split(n);
                let (known, mut sides) = if m <= k { sub(m, k, b) } else { sub(m - k, n - k, false) };
                sides.push(m > k);
                (known, sides)
            }
            sub(m, n, true)
        }

        /// PROOF(m, D[n]).
        fn proof(&self, m: usize, n: usize) -> Vec<Hash> {
            self.subproof(m, 0, n, true)
        }

        /// SUBPROOF(m, D[start:end], b) with `m` relative to `start`.
        fn subproof(&self, m: usize, start: usize, end: usize, b: bool) -> Vec<Hash> {
            let n = end - start;
            if m == n {
                return if b { Vec::new() } else { vec![self.mth(start, end)] };
            }
            let k = reference_split(n);
            if m <= k {
                let mut p = self.subproof(m, start, start + k, b);
                p.push(self.mth(start + k, end));
                p
            } else {
                let mut p = self.subproof(m - k, start + k, end, false);
                p.push(self.mth(start, start + k));
                p
            }
        }
    }

    /// A node store built only through `Frontier::push`, as the service builds its table.
    struct Store {
        nodes: HashMap<NodeId, Hash>,
        roots: Vec<Hash>,
        frontiers: Vec<Frontier>,
    }

    impl Store {
        fn build(leaves: &[Hash]) -> Self {
            let mut frontier = Frontier::new();
            let mut nodes = HashMap::new();
            let mut roots = vec![frontier.root()];
            let mut frontiers = vec![frontier.clone()];
            for leaf in leaves {
                for (id, hash) in frontier.push(*leaf).expect("push") {
                    assert!(nodes.insert(id, hash).is_none(), "node {id:?} formed twice");
                }
                roots.push(frontier.root());
                frontiers.push(frontier.clone());
            }
            Self {
                nodes,
                roots,
                frontiers,
            }
        }

        /// Runs a plan, first checking it only asks for nodes already complete at `size`.
        fn run(&self, plan: &[Vec<NodeId>], size: u64) -> Vec<Hash> {
            for id in plan.iter().flatten() {
                assert!(
                    (id.index + 1) << id.level <= size,
                    "plan for size {size} asks for {id:?}"
                );
            }
            assemble(plan, |id| self.nodes.get(&id).copied()).expect("all nodes stored")
        }
    }

    fn vector_leaves() -> Vec<Hash> {
        LEAF_INPUTS.iter().map(|s| leaf_hash(&unhex(s))).collect()
    }

    fn synthetic_leaves(n: usize) -> Vec<Hash> {
        (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// splitmix64, so sampled cases are the same on every run without a rand dependency.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform enough in `[lo, hi]` for test sampling.
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }
    }

    fn flipped(hash: &Hash, byte: usize) -> Hash {
        let mut out = *hash;
        out[byte % 32] ^= 0x10;
        out
    }

    /// Checks one inclusion proof in both directions: it verifies as given and every tampering is rejected.
    fn check_inclusion(m: u64, n: u64, leaf: &Hash, proof: &[Hash], root: &Hash) {
        assert_eq!(
            verify_inclusion(m, n, leaf, proof, root),
            Ok(()),
            "inclusion {m} in {n}"
        );
        let reject = |m: u64, n: u64, leaf: &Hash, proof: &[Hash], root: &Hash, what: &str| {
            assert!(
                verify_inclusion(m, n, leaf, proof, root).is_err(),
                "inclusion {m} in {n} accepted {what}"
            );
        };
        for i in 0..proof.len() {
            let mut altered = proof.to_vec();
            altered[i] = flipped(&altered[i], i);
            reject(m, n, leaf, &altered, root, "an altered hash");
            let mut shorter = proof.to_vec();
            shorter.remove(i);
            reject(m, n, leaf, &shorter, root, "a dropped hash");
        }
        for extra in [*root, *leaf, [0u8; 32]] {
            let mut longer = proof.to_vec();
            longer.push(extra);
            reject(m, n, leaf, &longer, root, "an appended hash");
            longer.rotate_right(1);
            reject(m, n, leaf, &longer, root, "a prepended hash");
        }
        reject(m, n, &flipped(leaf, 3), proof, root, "an altered leaf");
        reject(m, n, leaf, proof, &flipped(root, 7), "an altered root");
        reject(m, n, leaf, proof, &empty_root(), "the empty root");
        if m > 0 {
            reject(m - 1, n, leaf, proof, root, "index - 1");
        }
        reject(m + 1, n, leaf, proof, root, "index + 1");
        // The size only shapes the path: a neighbouring size with the same path shape must be
        // accepted (the RFC algorithm cannot tell them apart), every other one rejected.
        let sides = Reference::path_sides(m as usize, 0, n as usize);
        for other in [n - 1, n + 1] {
            if m < other {
                let same_shape = Reference::path_sides(m as usize, 0, other as usize) == sides;
                let accepted = verify_inclusion(m, other, leaf, proof, root).is_ok();
                assert_eq!(accepted, same_shape, "inclusion {m} in {n} checked as size {other}");
            }
        }
    }

    /// Checks one consistency proof in both directions: it verifies as given and every tampering is rejected.
    fn check_consistency(m: u64, n: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) {
        assert_eq!(
            verify_consistency(m, n, old_root, new_root, proof),
            Ok(()),
            "consistency {m} to {n}"
        );
        let reject = |m: u64, n: u64, old: &Hash, new: &Hash, proof: &[Hash], what: &str| {
            assert!(
                verify_consistency(m, n, old, new, proof).is_err(),
                "consistency {m} to {n} accepted {what}"
            );
        };
        for i in 0..proof.len() {
            let mut altered = proof.to_vec();
            altered[i] = flipped(&altered[i], i);
            reject(m, n, old_root, new_root, &altered, "an altered hash");
            let mut shorter = proof.to_vec();
            shorter.remove(i);
            reject(m, n, old_root, new_root, &shorter, "a dropped hash");
        }
        for extra in [*old_root, *new_root, [0u8; 32]] {
            let mut longer = proof.to_vec();
            longer.push(extra);
            reject(m, n, old_root, new_root, &longer, "an appended hash");
            longer.rotate_right(1);
            reject(m, n, old_root, new_root, &longer, "a prepended hash");
        }
        reject(m, n, &flipped(old_root, 5), new_root, proof, "an altered old root");
        reject(m, n, old_root, &flipped(new_root, 9), proof, "an altered new root");
        if m != n {
            reject(m, n, new_root, old_root, proof, "swapped roots");
        }
        // The old size is always bound, because it decides which hashes rebuild the old root.
        for old in [m - 1, m + 1] {
            if 1 <= old && old <= n {
                reject(old, n, old_root, new_root, proof, "a changed old size");
            }
        }
        // As with inclusion, the new size is bound only through the shape of the proof: a
        // neighbouring size with the same shape must be accepted, every other one rejected.
        let shape = Reference::proof_shape(m as usize, n as usize);
        for new in [n - 1, n + 1] {
            if m <= new {
                let same_shape = Reference::proof_shape(m as usize, new as usize) == shape;
                let accepted = verify_consistency(m, new, old_root, new_root, proof).is_ok();
                assert_eq!(accepted, same_shape, "consistency {m} to {n} checked as {m} to {new}");
            }
        }
    }

    #[test]
    fn rfc6962_roots() {
        let leaves = vector_leaves();
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        assert_eq!(empty_root(), h(ROOTS[0]));
        for (size, expected) in ROOTS.iter().enumerate() {
            let expected = h(expected);
            assert_eq!(reference.mth(0, size), expected, "reference MTH of size {size}");
            assert_eq!(store.roots[size], expected, "frontier root of size {size}");
            // The root plan as a one-element plan: assembling it yields the tree head.
            assert_eq!(
                store.run(&[root_plan(size as u64)], size as u64),
                vec![expected],
                "root plan of size {size}"
            );
        }
    }

    #[test]
    fn rfc6962_nodes_and_frontiers() {
        let store = Store::build(&vector_leaves());
        let mut expected = HashMap::new();
        for (level, row) in NODE_HASHES.iter().enumerate() {
            for (index, hex) in row.iter().enumerate() {
                expected.insert(
                    NodeId {
                        level: level as u8,
                        index: index as u64,
                    },
                    h(hex),
                );
            }
        }
        assert_eq!(store.nodes, expected);
        // The published compact trees: the frontier of each size is the root plan's nodes.
        for (size, frontier) in store.frontiers.iter().enumerate() {
            let planned: Vec<Hash> = root_plan(size as u64).iter().map(|id| expected[id]).collect();
            assert_eq!(frontier.hashes(), planned.as_slice(), "frontier of size {size}");
        }
    }

    #[test]
    fn rfc6962_inclusion_proofs() {
        let leaves = vector_leaves();
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        for (m, n, proof) in INCLUSION_VECTORS {
            let expected = hashes(proof);
            assert_eq!(
                reference.path(m as usize, 0, n as usize),
                expected,
                "reference PATH({m}, D[{n}])"
            );
            let plan = inclusion_proof_plan(m, n).expect("plan");
            assert_eq!(store.run(&plan, n), expected, "planned PATH({m}, D[{n}])");
            check_inclusion(m, n, &leaves[m as usize], &expected, &h(ROOTS[n as usize]));
        }
    }

    #[test]
    fn rfc6962_consistency_proofs() {
        let leaves = vector_leaves();
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        for (m, n, proof) in CONSISTENCY_VECTORS {
            let expected = hashes(proof);
            assert_eq!(
                reference.proof(m as usize, n as usize),
                expected,
                "reference PROOF({m}, D[{n}])"
            );
            let plan = consistency_proof_plan(m, n).expect("plan");
            assert_eq!(store.run(&plan, n), expected, "planned PROOF({m}, D[{n}])");
            check_consistency(m, n, &h(ROOTS[m as usize]), &h(ROOTS[n as usize]), &expected);
        }
    }

    #[test]
    fn inclusion_every_index_up_to_300() {
        let leaves = synthetic_leaves(300);
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        for n in 1..=300u64 {
            let root = store.roots[n as usize];
            assert_eq!(root, reference.mth(0, n as usize));
            for m in 0..n {
                let proof = store.run(&inclusion_proof_plan(m, n).expect("plan"), n);
                assert_eq!(proof, reference.path(m as usize, 0, n as usize), "PATH({m}, D[{n}])");
                check_inclusion(m, n, &leaves[m as usize], &proof, &root);
            }
        }
    }

    #[test]
    fn consistency_every_pair_up_to_130() {
        let leaves = synthetic_leaves(131);
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        for n in 1..=130u64 {
            for m in 1..=n {
                let proof = store.run(&consistency_proof_plan(m, n).expect("plan"), n);
                assert_eq!(proof, reference.proof(m as usize, n as usize), "PROOF({m}, D[{n}])");
                check_consistency(m, n, &store.roots[m as usize], &store.roots[n as usize], &proof);
            }
        }
    }

    #[test]
    fn sampled_proofs_up_to_5000() {
        const MAX: usize = 5000;
        let leaves = synthetic_leaves(MAX + 1);
        let reference = Reference::new(leaves.clone());
        let store = Store::build(&leaves);
        for (n, root) in store.roots.iter().enumerate() {
            assert_eq!(*root, reference.mth(0, n), "frontier root of size {n}");
        }
        let mut rng = SplitMix(0x5eed_1e55_0c0f_fee5);
        let mut sizes: Vec<u64> = vec![255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 5000];
        sizes.extend((0..40).map(|_| rng.range(301, MAX as u64)));
        for n in sizes {
            let root = store.roots[n as usize];
            let mut indices = vec![0, n / 2, n - 1];
            indices.extend((0..25).map(|_| rng.range(0, n - 1)));
            for m in indices {
                let proof = store.run(&inclusion_proof_plan(m, n).expect("plan"), n);
                assert_eq!(proof, reference.path(m as usize, 0, n as usize), "PATH({m}, D[{n}])");
                check_inclusion(m, n, &leaves[m as usize], &proof, &root);
            }
            let mut olds = vec![1, n / 2, n - 1, n];
            olds.extend((0..25).map(|_| rng.range(1, n)));
            for m in olds {
                let proof = store.run(&consistency_proof_plan(m, n).expect("plan"), n);
                assert_eq!(proof, reference.proof(m as usize, n as usize), "PROOF({m}, D[{n}])");
                check_consistency(m, n, &store.roots[m as usize], &root, &proof);
            }
        }
    }

    #[test]
    fn push_forms_exactly_the_completed_nodes() {
        let leaves = synthetic_leaves(1100);
        let reference = Reference::new(leaves.clone());
        let mut frontier = Frontier::new();
        let mut stored = 0usize;
        for (size, leaf) in (0u64..).zip(&leaves) {
            let formed = frontier.push(*leaf).expect("push");
            stored += formed.len();
            // The nodes ending exactly at the new size: one per level up to its trailing zeros.
            let new_size = size + 1;
            let expected_ids: Vec<NodeId> = (0..=new_size.trailing_zeros() as u8)
                .map(|level| NodeId {
                    level,
                    index: (new_size >> level) - 1,
                })
                .collect();
            let ids: Vec<NodeId> = formed.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, expected_ids, "nodes formed by leaf {size}");
            // The largest of them is the rightmost subtree of the new root plan.
            assert_eq!(root_plan(new_size).last(), expected_ids.last());
            for (id, hash) in &formed {
                let start = (id.index << id.level) as usize;
                assert_eq!(
                    *hash,
                    reference.mth(start, start + (1usize << id.level)),
                    "hash of {id:?}"
                );
                assert_eq!(range_nodes(start as u64, (id.index + 1) << id.level), Ok(vec![*id]));
            }
            assert_eq!(frontier.size(), new_size);
            assert_eq!(frontier.hashes().len(), new_size.count_ones() as usize);
        }
        // Every complete aligned subtree of the final tree was returned once.
        let n = leaves.len();
        let complete: usize = (0..64).map(|level| n >> level).sum();
        assert_eq!(stored, complete);
    }

    #[test]
    fn from_parts_round_trips() {
        let leaves = synthetic_leaves(600);
        let store = Store::build(&leaves);
        for (size, frontier) in store.frontiers.iter().enumerate() {
            let size = size as u64;
            let from_nodes: Vec<Hash> = root_plan(size).iter().map(|id| store.nodes[id]).collect();
            let restored = Frontier::from_parts(size, from_nodes).expect("restore");
            assert_eq!(&restored, frontier);
            assert_eq!(restored.root(), store.roots[size as usize]);
            if let Some(next) = leaves.get(size as usize) {
                let mut continued = restored.clone();
                let mut original = frontier.clone();
                assert_eq!(continued.push(*next), original.push(*next));
                assert_eq!(continued, original);
            }
            let mut wrong = frontier.hashes().to_vec();
            wrong.push([0; 32]);
            assert_eq!(Frontier::from_parts(size, wrong), Err(Error::BadSizes));
        }
        assert_eq!(Frontier::from_parts(3, vec![[1; 32]]), Err(Error::BadSizes));
    }

    #[test]
    fn full_tree_rejects_push() {
        let mut frontier = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).expect("restore");
        assert_eq!(frontier.push([0; 32]), Err(Error::TreeFull));
        assert_eq!(frontier.size(), u64::MAX);
        let mut almost = Frontier::from_parts(u64::MAX - 1, vec![[7; 32]; 63]).expect("restore");
        let formed = almost.push([0; 32]).expect("last leaf fits");
        assert_eq!(
            formed,
            vec![(
                NodeId {
                    level: 0,
                    index: u64::MAX - 1
                },
                [0; 32]
            )]
        );
        assert_eq!(almost.size(), u64::MAX);
        assert_eq!(root_plan(u64::MAX).len(), 64);
        assert_eq!(
            root_plan(u64::MAX).last(),
            Some(&NodeId {
                level: 0,
                index: u64::MAX - 1
            })
        );
    }

    #[test]
    fn range_nodes_accepts_exactly_recursion_ranges() {
        let id = |level, index| NodeId { level, index };
        assert_eq!(range_nodes(0, 7), Ok(vec![id(2, 0), id(1, 2), id(0, 6)]));
        assert_eq!(range_nodes(8, 13), Ok(vec![id(2, 2), id(0, 12)]));
        assert_eq!(range_nodes(4, 7), Ok(vec![id(1, 2), id(0, 6)]));
        assert_eq!(range_nodes(5, 6), Ok(vec![id(0, 5)]));
        assert_eq!(range_nodes(0, u64::MAX).map(|nodes| nodes.len()), Ok(64));
        assert_eq!(range_nodes(1 << 63, u64::MAX).map(|nodes| nodes.len()), Ok(63));
        for (start, end) in [(0, 0), (5, 5), (6, 5), (2, 5), (1, 3), (4, 9), (1, u64::MAX)] {
            assert_eq!(range_nodes(start, end), Err(Error::BadRange), "[{start}, {end})");
        }
        // Exhaustively on small trees: a range is accepted exactly when the recursion of some
        // tree reaches it, i.e. it is a node of the recursion for the tree ending at `end`.
        fn recursion_ranges(start: u64, end: u64, out: &mut std::collections::HashSet<(u64, u64)>) {
            out.insert((start, end));
            if end - start > 1 {
                let k = reference_split((end - start) as usize) as u64;
                recursion_ranges(start, start + k, out);
                recursion_ranges(start + k, end, out);
            }
        }
        let mut reachable = std::collections::HashSet::new();
        for n in 1..=64 {
            recursion_ranges(0, n, &mut reachable);
        }
        for start in 0..64 {
            for end in start + 1..=64 {
                assert_eq!(
                    range_nodes(start, end).is_ok(),
                    reachable.contains(&(start, end)),
                    "[{start}, {end})"
                );
            }
        }
    }

    #[test]
    fn combine_and_assemble_edges() {
        assert_eq!(combine(&[]), empty_root());
        let a = leaf_hash(b"a");
        assert_eq!(combine(&[a]), a);
        let (b, c) = (leaf_hash(b"b"), leaf_hash(b"c"));
        assert_eq!(combine(&[a, b, c]), node_hash(&a, &node_hash(&b, &c)));
        let plan = inclusion_proof_plan(0, 3).expect("plan");
        assert_eq!(
            assemble(&plan, |_| None),
            Err(Error::MissingNode(NodeId { level: 0, index: 1 }))
        );
        let mut asked = Vec::new();
        let proof = assemble(&plan, |id| {
            asked.push(id);
            Some([id.index as u8; 32])
        });
        assert_eq!(proof, Ok(vec![[1; 32], [2; 32]]));
        assert_eq!(
            asked,
            vec![NodeId { level: 0, index: 1 }, NodeId { level: 0, index: 2 }]
        );
    }

    #[test]
    fn plans_reject_bad_sizes() {
        assert_eq!(inclusion_proof_plan(0, 0), Err(Error::IndexOutOfRange));
        assert_eq!(inclusion_proof_plan(5, 5), Err(Error::IndexOutOfRange));
        assert_eq!(inclusion_proof_plan(0, 1), Ok(Vec::new()));
        assert_eq!(consistency_proof_plan(0, 0), Err(Error::BadSizes));
        assert_eq!(consistency_proof_plan(0, 5), Err(Error::BadSizes));
        assert_eq!(consistency_proof_plan(6, 5), Err(Error::BadSizes));
        assert_eq!(consistency_proof_plan(5, 5), Ok(Vec::new()));
        assert!(root_plan(0).is_empty());
        // Plans for the largest trees need no arithmetic beyond u64.
        let plan = inclusion_proof_plan(u64::MAX - 1, u64::MAX).expect("plan");
        assert_eq!(plan.len(), 63);
        let plan = consistency_proof_plan(u64::MAX - 1, u64::MAX).expect("plan");
        assert_eq!(plan.len(), 64);
    }

    #[test]
    fn verification_edge_cases() {
        let leaf = leaf_hash(b"only");
        let other = leaf_hash(b"other");
        assert_eq!(verify_inclusion(0, 1, &leaf, &[], &leaf), Ok(()));
        assert_eq!(verify_inclusion(0, 1, &leaf, &[], &other), Err(Error::RootMismatch));
        assert_eq!(
            verify_inclusion(0, 1, &leaf, &[other], &leaf),
            Err(Error::WrongProofLength)
        );
        assert_eq!(
            verify_inclusion(0, 0, &leaf, &[], &empty_root()),
            Err(Error::IndexOutOfRange)
        );
        assert_eq!(verify_inclusion(1, 1, &leaf, &[], &leaf), Err(Error::IndexOutOfRange));
        assert_eq!(verify_inclusion(0, 2, &leaf, &[], &leaf), Err(Error::WrongProofLength));

        let empty = empty_root();
        assert_eq!(verify_consistency(0, 0, &empty, &empty, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 0, &leaf, &leaf, &[]), Err(Error::OldRootMismatch));
        assert_eq!(verify_consistency(0, 0, &empty, &leaf, &[]), Err(Error::RootMismatch));
        assert_eq!(verify_consistency(0, 7, &empty, &leaf, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 7, &leaf, &leaf, &[]), Err(Error::OldRootMismatch));
        assert_eq!(
            verify_consistency(0, 7, &empty, &leaf, &[empty]),
            Err(Error::WrongProofLength)
        );
        assert_eq!(verify_consistency(3, 3, &leaf, &leaf, &[]), Ok(()));
        assert_eq!(verify_consistency(3, 3, &leaf, &other, &[]), Err(Error::RootMismatch));
        assert_eq!(
            verify_consistency(3, 3, &leaf, &leaf, &[leaf]),
            Err(Error::WrongProofLength)
        );
        assert_eq!(verify_consistency(4, 3, &leaf, &leaf, &[]), Err(Error::BadSizes));
        assert_eq!(
            verify_consistency(1, 2, &leaf, &other, &[]),
            Err(Error::WrongProofLength)
        );
        assert_eq!(
            verify_consistency(1, 2, &leaf, &node_hash(&leaf, &other), &[other]),
            Ok(())
        );
        assert_eq!(
            verify_consistency(1, 2, &other, &node_hash(&leaf, &other), &[other]),
            Err(Error::RootMismatch)
        );
        assert_eq!(
            verify_consistency(2, 3, &leaf, &other, &[other]),
            Err(Error::RootMismatch)
        );
        assert_eq!(
            verify_consistency(2, 3, &leaf, &other, &[other, other]),
            Err(Error::WrongProofLength)
        );
    }

    #[test]
    fn errors_display() {
        let missing = Error::MissingNode(NodeId { level: 3, index: 9 });
        assert_eq!(missing.to_string(), "no stored hash for node level 3 index 9");
        let boxed: Box<dyn std::error::Error> = Box::new(Error::RootMismatch);
        assert_eq!(boxed.to_string(), "proof does not lead to the expected root");
    }
}
