//! A restricted reader for the `data.pkl` of a PyTorch checkpoint: it understands a state dict
//! of tensors and nothing else.
//!
//! Python's pickle is a small stack machine whose `GLOBAL` + `REDUCE` opcodes call arbitrary
//! functions, so loading an untrusted `.pth` with `torch.load` runs whatever the file says.
//! This reader *interprets* the opcodes instead and never calls anything: the only callables it
//! knows are `collections.OrderedDict` (→ an empty dict) and `torch._utils._rebuild_tensor_v2`
//! (→ a tensor description), and the only other globals it accepts are torch storage types and
//! dtypes used as data. Any other global, any other callable, and any opcode outside the small
//! set a state dict needs is refused with an error naming it, at the byte where it occurs.
//!
//! Objects live in an arena and the stack and memo hold indices, so sharing (`BINGET`) costs
//! nothing, cycles cannot leak or recurse, and dropping the result is flat — a hostile pickle
//! can make us allocate at most in proportion to its own length, which is capped.

use std::collections::HashMap;
use std::path::Path;

use crate::WeightsError;

/// Pickles above this size are refused; a real Mixtral `data.pkl` is about 100 KiB.
pub const MAX_PICKLE_LEN: usize = 64 << 20;

/// Tensors of higher rank are refused (Mixtral's have 1 or 2 dims); the bound also keeps a
/// hostile pickle from multiplying one huge size tuple into many tensors.
pub const MAX_DIMS: usize = 8;

/// The element type a pickled storage declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    BF16,
    F16,
    F32,
    /// `torch.UntypedStorage`: bytes (`uint8`), which no Mixtral tensor uses.
    Untyped,
}

impl StorageKind {
    fn from_global(module: &str, name: &str) -> Option<Global> {
        if module != "torch" {
            return None;
        }
        Some(match name {
            "BFloat16Storage" => Global::StorageType(StorageKind::BF16),
            "HalfStorage" => Global::StorageType(StorageKind::F16),
            "FloatStorage" => Global::StorageType(StorageKind::F32),
            "UntypedStorage" => Global::StorageType(StorageKind::Untyped),
            "bfloat16" => Global::Dtype(StorageKind::BF16),
            "float16" | "half" => Global::Dtype(StorageKind::F16),
            "float32" | "float" => Global::Dtype(StorageKind::F32),
            "uint8" => Global::Dtype(StorageKind::Untyped),
            _ => return None,
        })
    }
}

/// One tensor of the state dict, as the pickle describes it (not yet checked against the zip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickledTensor {
    /// The state-dict key (Mistral's name).
    pub name: String,
    pub storage_key: String,
    pub storage_kind: StorageKind,
    /// Elements in the storage.
    pub storage_numel: u64,
    /// Offset of the first element, in elements.
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    StorageType(StorageKind),
    Dtype(StorageKind),
}

type Id = usize;

#[derive(Debug)]
enum Obj {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage {
        kind: StorageKind,
        key: String,
        numel: u64,
    },
    Tensor {
        storage: Id,
        offset: u64,
        size: Vec<u64>,
        stride: Vec<u64>,
    },
}

impl Obj {
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool => "bool",
            Obj::Int(_) => "int",
            Obj::Float => "float",
            Obj::Str(_) => "str",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage { .. } => "storage",
            Obj::Tensor { .. } => "tensor",
        }
    }
}

/// The name of a pickle opcode, for error messages.
fn opcode_name(op: u8) -> String {
    let n = match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return format!("0x{op:02x} (unknown)"),
    };
    format!("{n} (0x{op:02x})")
}

struct Machine<'a> {
    file: &'a Path,
    data: &'a [u8],
    pos: usize,
    /// Position of the opcode being executed, for errors.
    op_pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn err(&self, reason: impl Into<String>) -> WeightsError {
        WeightsError::Pickle {
            file: self.file.to_path_buf(),
            pos: self.op_pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WeightsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.err("truncated: argument runs past the end of data.pkl"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WeightsError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WeightsError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WeightsError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str, WeightsError> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL name not terminated by a newline within 256 bytes"))?;
        let s =
            std::str::from_utf8(&rest[..nl]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn alloc(&mut self, o: Obj) -> Id {
        self.arena.push(o);
        self.arena.len() - 1
    }

    fn push(&mut self, o: Obj) {
        let id = self.alloc(o);
        self.stack.push(id);
    }

    fn pop(&mut self) -> Result<Id, WeightsError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    fn top(&self) -> Result<Id, WeightsError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, WeightsError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop to"))?;
        Ok(self.stack.split_off(m))
    }

    fn global(&self, module: &str, name: &str) -> Result<Global, WeightsError> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            _ => StorageKind::from_global(module, name),
        };
        g.ok_or_else(|| WeightsError::PickleGlobal {
            file: self.file.to_path_buf(),
            pos: self.op_pos,
            global: format!("{module}.{name}"),
        })
    }

    fn string(&mut self, n: usize) -> Result<(), WeightsError> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))?;
        self.push(Obj::Str(s.to_string()));
        Ok(())
    }

    fn int_of(&self, id: Id, what: &str) -> Result<u64, WeightsError> {
        match self.arena[id] {
            Obj::Int(i) if i >= 0 => Ok(i as u64),
            ref o => Err(self.err(format!(
                "{what}: expected a non-negative int, found {}",
                o.kind()
            ))),
        }
    }

    fn ints_of(&self, id: Id, what: &str) -> Result<Vec<u64>, WeightsError> {
        match &self.arena[id] {
            Obj::Tuple(v) if v.len() > MAX_DIMS => Err(self.err(format!(
                "{what}: {} dims, at most {MAX_DIMS} are supported",
                v.len()
            ))),
            Obj::Tuple(v) => v.iter().map(|&i| self.int_of(i, what)).collect(),
            o => Err(self.err(format!(
                "{what}: expected a tuple of ints, found {}",
                o.kind()
            ))),
        }
    }

    fn str_of(&self, id: Id, what: &str) -> Result<String, WeightsError> {
        match &self.arena[id] {
            Obj::Str(s) => Ok(s.clone()),
            o => Err(self.err(format!("{what}: expected a str, found {}", o.kind()))),
        }
    }

    fn persistent_load(&mut self, pid: Id) -> Result<Obj, WeightsError> {
        let Obj::Tuple(t) = &self.arena[pid] else {
            return Err(self.err(format!(
                "persistent id is a {}, expected ('storage', type, key, location, numel)",
                self.arena[pid].kind()
            )));
        };
        if t.len() != 5 {
            return Err(self.err(format!(
                "persistent id has {} fields, expected ('storage', type, key, location, numel)",
                t.len()
            )));
        }
        let t = t.clone();
        let tag = self.str_of(t[0], "persistent id tag")?;
        if tag != "storage" {
            return Err(self.err(format!("persistent id tag `{tag}`, expected `storage`")));
        }
        let kind = match self.arena[t[1]] {
            Obj::Global(Global::StorageType(k)) | Obj::Global(Global::Dtype(k)) => k,
            ref o => {
                return Err(self.err(format!(
                    "storage type is a {}, expected a torch storage type",
                    o.kind()
                )))
            }
        };
        let key = self.str_of(t[2], "storage key")?;
        self.str_of(t[3], "storage location")?;
        let numel = self.int_of(t[4], "storage numel")?;
        Ok(Obj::Storage { kind, key, numel })
    }

    fn reduce(&mut self, func: Id, args: Id) -> Result<Obj, WeightsError> {
        let Obj::Tuple(a) = &self.arena[args] else {
            return Err(self.err(format!(
                "REDUCE arguments are a {}, expected a tuple",
                self.arena[args].kind()
            )));
        };
        let a = a.clone();
        match self.arena[func] {
            Obj::Global(Global::OrderedDict) => {
                if !a.is_empty() {
                    return Err(self
                        .err("OrderedDict called with arguments; only OrderedDict() is allowed"));
                }
                Ok(Obj::Dict(Vec::new()))
            }
            Obj::Global(Global::RebuildTensorV2) => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&a.len()) {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2 called with {} arguments, expected 6 or 7",
                        a.len()
                    )));
                }
                if !matches!(self.arena[a[0]], Obj::Storage { .. }) {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2: first argument is a {}, expected a storage",
                        self.arena[a[0]].kind()
                    )));
                }
                let offset = self.int_of(a[1], "storage offset")?;
                let size = self.ints_of(a[2], "tensor size")?;
                let stride = self.ints_of(a[3], "tensor stride")?;
                if !matches!(self.arena[a[4]], Obj::Bool) {
                    return Err(self.err("_rebuild_tensor_v2: requires_grad is not a bool"));
                }
                match &self.arena[a[5]] {
                    Obj::Dict(d) if d.is_empty() => {}
                    Obj::None => {}
                    _ => return Err(self.err("_rebuild_tensor_v2: backward hooks must be empty")),
                }
                Ok(Obj::Tensor {
                    storage: a[0],
                    offset,
                    size,
                    stride,
                })
            }
            ref o => Err(self.err(format!(
                "REDUCE of a {}: only OrderedDict and _rebuild_tensor_v2 may be called",
                o.kind()
            ))),
        }
    }

    fn run(&mut self) -> Result<Id, WeightsError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("pickle protocol {v} is not supported")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Obj::Dict(Vec::new())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool),
                0x89 => self.push(Obj::Bool),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Obj::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Obj::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes exceeds 64 bits")));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xFFu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Obj::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    // BINFLOAT: no float matters for weights; keep only its place on the stack.
                    self.take(8)?;
                    self.push(Obj::Float);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let top = self.top()?;
                    self.memo.insert(i, top);
                }
                b'r' => {
                    let i = self.u32()?;
                    let top = self.top()?;
                    self.memo.insert(i, top);
                }
                0x94 => {
                    let i =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    let top = self.top()?;
                    self.memo.insert(i, top);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let id = *self
                        .memo
                        .get(&i)
                        .ok_or_else(|| self.err(format!("memo key {i} was never stored")))?;
                    self.stack.push(id);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Obj::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Obj::Str(m), Obj::Str(n)) = (&self.arena[module], &self.arena[name])
                    else {
                        return Err(self.err("STACK_GLOBAL operands are not strings"));
                    };
                    let g = self.global(m, n)?;
                    self.push(Obj::Global(g));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let o = self.persistent_load(pid)?;
                    self.push(o);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let o = self.reduce(func, args)?;
                    self.push(o);
                }
                b'b' => {
                    // BUILD on a dict sets instance attributes (a state_dict's `_metadata`);
                    // they mean nothing for weights and are dropped.
                    let state = self.pop()?;
                    let target = self.top()?;
                    if !matches!(self.arena[target], Obj::Dict(_))
                        || !matches!(self.arena[state], Obj::Dict(_) | Obj::None)
                    {
                        return Err(self.err(format!(
                            "BUILD of a {} with a {}: only dict attributes are allowed",
                            self.arena[target].kind(),
                            self.arena[state].kind()
                        )));
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of items"));
                    }
                    let target = self.top()?;
                    let Obj::Dict(d) = &mut self.arena[target] else {
                        let k = self.arena[target].kind();
                        return Err(self.err(format!("SETITEM on a {k}, expected a dict")));
                    };
                    d.extend(items.chunks_exact(2).map(|c| (c[0], c[1])));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let target = self.top()?;
                    let Obj::List(l) = &mut self.arena[target] else {
                        let k = self.arena[target].kind();
                        return Err(self.err(format!("APPEND on a {k}, expected a list")));
                    };
                    l.extend(items);
                }
                _ => {
                    return Err(WeightsError::PickleOpcode {
                        file: self.file.to_path_buf(),
                        pos: self.op_pos,
                        opcode: opcode_name(op),
                    })
                }
            }
        }
    }
}

/// Interprets `pkl` (a `data.pkl`) as a state dict of tensors, without executing anything.
/// `file` names the archive in errors.
pub fn read_state_dict(file: &Path, pkl: &[u8]) -> Result<Vec<PickledTensor>, WeightsError> {
    if pkl.len() > MAX_PICKLE_LEN {
        return Err(WeightsError::Pickle {
            file: file.to_path_buf(),
            pos: 0,
            reason: format!(
                "data.pkl is {} bytes, above the {MAX_PICKLE_LEN}-byte limit",
                pkl.len()
            ),
        });
    }
    let mut m = Machine {
        file,
        data: pkl,
        pos: 0,
        op_pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let end = m.pos;
    let Obj::Dict(items) = &m.arena[root] else {
        return Err(m.err(format!(
            "the pickle holds a {}, expected a state dict",
            m.arena[root].kind()
        )));
    };
    if end != pkl.len() {
        m.op_pos = end;
        return Err(m.err(format!("{} bytes follow STOP", pkl.len() - end)));
    }
    let mut seen = std::collections::HashSet::new();
    for &(k, _) in items {
        let name = m.str_of(k, "state dict key")?;
        if !seen.insert(name.clone()) {
            return Err(m.err(format!("state dict key `{name}` appears twice")));
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for &(k, v) in items {
        let name = m.str_of(k, "state dict key")?;
        let Obj::Tensor {
            storage,
            offset,
            size,
            stride,
        } = &m.arena[v]
        else {
            return Err(m.err(format!(
                "state dict value for `{name}` is a {}, expected a tensor",
                m.arena[v].kind()
            )));
        };
        let Obj::Storage { kind, key, numel } = &m.arena[*storage] else {
            return Err(m.err(format!("tensor `{name}` has no storage")));
        };
        out.push(PickledTensor {
            name,
            storage_key: key.clone(),
            storage_kind: *kind,
            storage_numel: *numel,
            offset: *offset,
            size: size.clone(),
            stride: stride.clone(),
        });
    }
    Ok(out)
}
