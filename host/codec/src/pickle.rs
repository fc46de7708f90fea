//! A restricted pickle machine (protocol 2, plus the trivial protocol-4 framing opcodes) for torch `data.pkl`.
//!
//! No crate reads pickles without executing them, so this one is hand-written and small. It never calls anything:
//! `GLOBAL` resolves a name against a fixed allow-list into a tagged [`Node`], and `REDUCE` is interpreted only for
//! those tags (tensor rebuilding, `OrderedDict`, `set`, numpy scalars/dtypes, `_codecs.encode`). Any other global or
//! opcode is an error naming it and its byte offset. Objects live in an arena; memo entries are arena ids, so shared
//! references cost nothing and cycles are harmless. Object count, nesting depth and sizes are bounded by [`Limits`].
//!
//! **Cost linear in the program.** Every opcode does work proportional to the bytes it consumes, except the few
//! REDUCEs that build a value from another one (`set(list)`, `_codecs.encode(str)`, a storage key or numpy dtype code
//! taken from a memoised string). A memo reference is two bytes, so repeating such a REDUCE on one large memoised
//! value would grow memory with the square of the program; every byte and id these copies make is therefore charged
//! against a budget of one program's length (plus [`COPY_BUDGET_BASE`]), and nothing else copies a value: arguments
//! are read in place. An arena node is 32 bytes and every node needs at least one opcode byte, so the arena is at
//! most 32 bytes per program byte, and [`Limits::max_objects`] caps it further.

use std::cell::Cell;
use std::collections::HashMap;

use crate::tensor::{DType, MAX_DIMS, TensorMeta};
use crate::{CodecError, Limits};

/// Index of a node in the arena.
pub type Id = u32;

/// A global from the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch.<X>Storage`.
    Storage(DType),
    /// `torch.<dtype>` (e.g. `torch.float32`).
    TorchDtype(DType),
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `builtins.set` / `__builtin__.set`.
    Set,
    /// `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar`.
    NumpyScalar,
    /// `numpy.dtype`.
    NumpyDtype,
    /// `_codecs.encode`.
    CodecsEncode,
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch", n) if n.ends_with("Storage") => Global::Storage(DType::from_storage(n)?),
            ("torch", n) => Global::TorchDtype(DType::from_torch_name(n)?),
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("builtins" | "__builtin__", "set") => Global::Set,
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NumpyScalar,
            ("numpy", "dtype") => Global::NumpyDtype,
            ("_codecs", "encode") => Global::CodecsEncode,
            _ => return None,
        })
    }
}

/// A storage reference from `BINPERSID`: `('storage', <XStorage>, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: DType,
    /// Record key (`data/<key>`).
    pub key: String,
    /// Declared element count.
    pub numel: u64,
}

/// Longest storage key accepted (torch writes decimal numbers; the key is copied into every tensor built on it).
pub const MAX_STORAGE_KEY: usize = 64;
/// Longest numpy dtype code accepted (`<i8`, `float64`, …).
pub const MAX_DTYPE_CODE: usize = 16;
/// Bytes of copies allowed beyond the program's own length (see the module docs).
pub const COPY_BUDGET_BASE: u64 = 64 << 10;

/// A value built by the pickle program.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict (or `OrderedDict`), in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set.
    Set(Vec<Id>),
    /// An allow-listed global, not yet applied.
    Global(Global),
    /// A storage reference from `BINPERSID` (boxed: it is rare, and keeps every node at 32 bytes).
    Storage(Box<StorageRef>),
    /// A tensor from `_rebuild_tensor_v2`, checked against its storage record (boxed, as `Storage`).
    Tensor(Box<TensorMeta>),
    /// `numpy.dtype(code, …)`.
    NumpyDtype(String),
}

impl Node {
    /// Short description for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::Global(_) => "global",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
            Node::NumpyDtype(_) => "numpy dtype",
        }
    }
}

/// The result of running a pickle program: an arena of nodes and the root.
#[derive(Debug)]
pub struct Pickled {
    nodes: Vec<Node>,
    root: Id,
}

impl Pickled {
    /// The root object.
    pub fn root(&self) -> Id {
        self.root
    }
    /// The node with id `id`.
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }
    /// Number of nodes (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Whether there are no nodes (never, for a parsed program: it has a root).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Runs `program` under `limits`. `record_len(key)` gives the byte length of storage record `data/<key>`, if any.
pub fn unpickle(
    program: &[u8],
    limits: &Limits,
    record_len: &dyn Fn(&str) -> Option<u64>,
) -> Result<Pickled, CodecError> {
    let mut m = Machine {
        p: program,
        pos: 0,
        op_at: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        limits,
        record_len,
        copied: Cell::new(0),
        copy_budget: program.len() as u64 + COPY_BUDGET_BASE,
    };
    let root = m.run()?;
    Ok(Pickled { nodes: m.nodes, root })
}

struct Machine<'a> {
    p: &'a [u8],
    pos: usize,
    op_at: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    limits: &'a Limits,
    record_len: &'a dyn Fn(&str) -> Option<u64>,
    /// Bytes and ids copied by REDUCEs so far (a `Cell`: charged while the arguments are borrowed in place).
    copied: Cell<u64>,
    copy_budget: u64,
}

impl Machine<'_> {
    fn err(&self, reason: impl Into<String>) -> CodecError {
        CodecError::Pickle {
            offset: self.op_at,
            reason: reason.into(),
        }
    }

    /// Charges `bytes` of copying against the budget (see the module docs).
    fn charge(&self, bytes: usize) -> Result<(), CodecError> {
        let total = self.copied.get().saturating_add(bytes as u64);
        self.copied.set(total);
        Limits::check("bytes copied by pickle REDUCEs", total, self.copy_budget)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.p.len())
            .ok_or_else(|| self.err("truncated program"))?;
        let s = &self.p[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String, CodecError> {
        let rest = &self.p[self.pos..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL name without newline within 256 bytes"))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("GLOBAL name is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn new_node(&mut self, n: Node) -> Result<Id, CodecError> {
        if self.nodes.len() >= self.limits.max_objects {
            return Err(CodecError::Limit {
                what: "pickle object count",
                actual: self.nodes.len() as u64 + 1,
                limit: self.limits.max_objects as u64,
            });
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as Id)
    }
    fn push(&mut self, n: Node) -> Result<(), CodecError> {
        let id = self.new_node(n)?;
        self.stack.push(id);
        Ok(())
    }
    fn pop(&mut self) -> Result<Id, CodecError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&self) -> Result<Id, CodecError> {
        self.stack.last().copied().ok_or_else(|| self.err("stack underflow"))
    }
    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Id>, CodecError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize) -> Result<(), CodecError> {
        let err = self.err("string is not UTF-8");
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| err)?.to_string();
        self.push(Node::Str(s))
    }
    fn bytes(&mut self, n: usize) -> Result<(), CodecError> {
        let b = self.take(n)?.to_vec();
        self.push(Node::Bytes(b))
    }
    fn len(&mut self, n: u64) -> Result<usize, CodecError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.p.len())
            .ok_or_else(|| self.err(format!("length {n} exceeds the program")))
    }
    fn memo_put(&mut self, key: u32) -> Result<(), CodecError> {
        let top = self.top()?;
        if self.memo.len() >= self.limits.max_objects {
            return Err(self.err("memo too large"));
        }
        self.memo.insert(key, top);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), CodecError> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }
    fn int(&self, id: Id, what: &str) -> Result<i64, CodecError> {
        match self.nodes[id as usize] {
            Node::Int(v) => Ok(v),
            Node::Bool(b) => Ok(b as i64),
            ref other => Err(self.err(format!("{what} is a {}, expected an int", other.kind()))),
        }
    }
    fn str_of(&self, id: Id, what: &str) -> Result<&str, CodecError> {
        match &self.nodes[id as usize] {
            Node::Str(s) => Ok(s),
            other => Err(self.err(format!("{what} is a {}, expected a str", other.kind()))),
        }
    }
    fn tuple_of(&self, id: Id, what: &str) -> Result<&[Id], CodecError> {
        match &self.nodes[id as usize] {
            Node::Tuple(t) => Ok(t),
            other => Err(self.err(format!("{what} is a {}, expected a tuple", other.kind()))),
        }
    }

    fn run(&mut self) -> Result<Id, CodecError> {
        loop {
            self.op_at = self.pos;
            if self.marks.len() > self.limits.max_depth {
                return Err(CodecError::Limit {
                    what: "MARK nesting",
                    actual: self.marks.len() as u64,
                    limit: self.limits.max_depth as u64,
                });
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if !(2..=5).contains(&v) {
                        return Err(self.err(format!("pickle protocol {v} is not supported")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a size hint only
                }
                b'.' => {
                    let root = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.err("STOP with items left on the stack"));
                    }
                    return Ok(root);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b']' => self.push(Node::List(Vec::new()))?,
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v as i64))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Node::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Node::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    self.string(n)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    self.string(n)?
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    self.bytes(n)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.bytes(n)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.extend_dict(d, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.extend_dict(d, items)?
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    let global = self.resolve(&module, &name)?;
                    self.push(Node::Global(global))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (
                        self.str_of(module, "STACK_GLOBAL module")?,
                        self.str_of(name, "STACK_GLOBAL name")?,
                    );
                    let global = self.resolve(module, name)?;
                    self.push(Node::Global(global))?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent(pid)?;
                    self.push(storage)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.reduce(callable, args)?;
                    self.push(result)?
                }
                b'b' => {
                    let _state = self.pop()?;
                    let obj = self.top()?;
                    if !matches!(self.nodes[obj as usize], Node::NumpyDtype(_)) {
                        return Err(self.err(format!("BUILD on a {} is not allowed", self.nodes[obj as usize].kind())));
                    }
                }
                other => return Err(self.err(format!("opcode 0x{other:02x} ({:?}) is not allowed", other as char))),
            }
        }
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Result<(), CodecError> {
        let err = self.err("APPEND(S) target is not a list");
        match &mut self.nodes[list as usize] {
            Node::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn extend_dict(&mut self, dict: Id, items: Vec<Id>) -> Result<(), CodecError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let err = self.err("SETITEM(S) target is not a dict");
        match &mut self.nodes[dict as usize] {
            Node::Dict(d) => {
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn resolve(&self, module: &str, name: &str) -> Result<Global, CodecError> {
        Global::resolve(module, name).ok_or_else(|| CodecError::ForbiddenGlobal {
            offset: self.op_at,
            // Bounded: a name from the stack may be a large memoised string.
            name: format!("{}.{}", clip(module), clip(name)),
        })
    }

    /// `BINPERSID` with `('storage', <XStorage>, key, location, numel)`.
    fn persistent(&self, pid: Id) -> Result<Node, CodecError> {
        let t = self.tuple_of(pid, "persistent id")?;
        let [tag, class, key, _location, numel] = *t else {
            return Err(self.err(format!("persistent id has {} fields, expected 5", t.len())));
        };
        if self.str_of(tag, "persistent id tag")? != "storage" {
            return Err(self.err("persistent id tag is not 'storage'"));
        }
        let Node::Global(Global::Storage(dtype)) = self.nodes[class as usize] else {
            return Err(self.err("persistent id does not name a storage class"));
        };
        let key = self.str_of(key, "storage key")?;
        if key.len() > MAX_STORAGE_KEY {
            return Err(self.err(format!(
                "storage key of {} bytes (at most {MAX_STORAGE_KEY})",
                key.len()
            )));
        }
        self.charge(key.len())?;
        let key = key.to_string();
        let numel = u64::try_from(self.int(numel, "storage numel")?).map_err(|_| self.err("negative storage numel"))?;
        let len = (self.record_len)(&key).ok_or_else(|| self.err(format!("storage record data/{key} is missing")))?;
        let need = numel.checked_mul(dtype.size() as u64);
        if need.is_none_or(|n| n > len) {
            return Err(self.err(format!(
                "storage data/{key} declares {numel} {dtype:?} elements but its record holds {len} bytes"
            )));
        }
        Ok(Node::Storage(Box::new(StorageRef { dtype, key, numel })))
    }

    fn reduce(&self, callable: Id, args: Id) -> Result<Node, CodecError> {
        let Node::Global(g) = self.nodes[callable as usize] else {
            return Err(self.err(format!(
                "REDUCE on a {} is not allowed",
                self.nodes[callable as usize].kind()
            )));
        };
        let args = self.tuple_of(args, "REDUCE arguments")?;
        match g {
            Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::OrderedDict => match *args {
                [] => Ok(Node::Dict(Vec::new())),
                _ => Err(self.err("OrderedDict with arguments is not supported")),
            },
            Global::Set => match *args {
                [items] => match &self.nodes[items as usize] {
                    Node::List(l) | Node::Tuple(l) => {
                        self.charge(l.len() * size_of::<Id>())?;
                        Ok(Node::Set(l.clone()))
                    }
                    other => Err(self.err(format!("set() of a {}", other.kind()))),
                },
                [] => Ok(Node::Set(Vec::new())),
                _ => Err(self.err("set() takes one argument")),
            },
            Global::CodecsEncode => {
                let [s, enc] = *args else {
                    return Err(self.err("_codecs.encode takes two arguments"));
                };
                if !matches!(self.str_of(enc, "encoding")?, "latin1" | "latin-1") {
                    return Err(self.err("_codecs.encode: only latin1 is supported"));
                }
                let s = self.str_of(s, "_codecs.encode text")?;
                self.charge(s.len())?;
                let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                Ok(Node::Bytes(
                    bytes.ok_or_else(|| self.err("latin1 text has a character above U+00FF"))?,
                ))
            }
            Global::NumpyDtype => {
                let [code, ..] = *args else {
                    return Err(self.err("numpy.dtype without arguments"));
                };
                let code = self.str_of(code, "numpy dtype code")?;
                if code.len() > MAX_DTYPE_CODE {
                    return Err(self.err(format!("numpy dtype code of {} bytes", code.len())));
                }
                self.charge(code.len())?;
                Ok(Node::NumpyDtype(code.to_string()))
            }
            Global::NumpyScalar => {
                let [dtype, data] = *args else {
                    return Err(self.err("numpy scalar takes two arguments"));
                };
                let Node::NumpyDtype(code) = &self.nodes[dtype as usize] else {
                    return Err(self.err("numpy scalar without a numpy dtype"));
                };
                let Node::Bytes(b) = &self.nodes[data as usize] else {
                    return Err(self.err("numpy scalar without bytes"));
                };
                numpy_scalar(code, b).ok_or_else(|| {
                    self.err(format!(
                        "numpy scalar of dtype {code:?} with {} bytes is not supported",
                        b.len()
                    ))
                })
            }
            Global::Storage(_) | Global::TorchDtype(_) => {
                Err(self.err("calling a storage class or dtype is not allowed"))
            }
        }
    }

    fn rebuild_tensor(&self, args: &[Id]) -> Result<Node, CodecError> {
        if !(4..=7).contains(&args.len()) {
            return Err(self.err(format!("_rebuild_tensor_v2 with {} arguments", args.len())));
        }
        let Node::Storage(ref storage) = self.nodes[args[0] as usize] else {
            return Err(self.err("_rebuild_tensor_v2: first argument is not a storage"));
        };
        let StorageRef { dtype, ref key, numel } = **storage;
        let offset =
            u64::try_from(self.int(args[1], "storage offset")?).map_err(|_| self.err("negative storage offset"))?;
        let dims = |id: Id, what: &str| -> Result<Vec<u64>, CodecError> {
            let t = self.tuple_of(id, what)?;
            if t.len() > MAX_DIMS {
                return Err(self.err(format!("{what} has {} dimensions (at most {MAX_DIMS})", t.len())));
            }
            t.iter()
                .map(|&d| u64::try_from(self.int(d, what)?).map_err(|_| self.err(format!("negative {what}"))))
                .collect()
        };
        let (shape, stride) = (dims(args[2], "size")?, dims(args[3], "stride")?);
        self.charge(key.len() + 16 * shape.len())?;
        let meta = TensorMeta::new(dtype, key.clone(), numel, offset, shape, stride)
            .map_err(|reason| self.err(format!("tensor on data/{key}: {reason}")))?;
        Ok(Node::Tensor(Box::new(meta)))
    }
}

fn numpy_scalar(code: &str, b: &[u8]) -> Option<Node> {
    let code = code.trim_start_matches(['<', '=', '|']);
    let int = |n: usize, signed: bool| -> Option<Node> {
        if b.len() != n {
            return None;
        }
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(b);
        if signed && b[n - 1] & 0x80 != 0 {
            buf[n..].fill(0xff);
        }
        let v = i64::from_le_bytes(buf);
        if !signed && v < 0 { None } else { Some(Node::Int(v)) }
    };
    match code {
        "i1" => int(1, true),
        "i2" => int(2, true),
        "i4" => int(4, true),
        "i8" => int(8, true),
        "u1" => int(1, false),
        "u2" => int(2, false),
        "u4" => int(4, false),
        "u8" => int(8, false),
        "f8" => Some(Node::Float(f64::from_le_bytes(b.try_into().ok()?))),
        "f4" => Some(Node::Float(f32::from_le_bytes(b.try_into().ok()?) as f64)),
        "b1" => Some(Node::Bool(*b.first()? != 0)),
        _ => None,
    }
}

/// At most 80 characters of `s`, for error messages about names that may be large.
fn clip(s: &str) -> &str {
    &s[..s.floor_char_boundary(80)]
}
