//! Tensors as torch pickles them: a typed storage record plus `(storage_offset, size, stride)`, every index checked.

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.uint8`
    U8,
    /// `torch.int8`
    I8,
    /// `torch.int16`
    I16,
    /// `torch.int32`
    I32,
    /// `torch.int64`
    I64,
    /// `torch.float16`
    F16,
    /// `torch.bfloat16`
    BF16,
    /// `torch.float32`
    F32,
    /// `torch.float64`
    F64,
    /// `torch.bool`
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }
    /// The torch name (`float32`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Bool => "bool",
        }
    }
    pub(crate) fn from_storage(class: &str) -> Option<Self> {
        Some(match class {
            "ByteStorage" => DType::U8,
            "CharStorage" => DType::I8,
            "ShortStorage" => DType::I16,
            "IntStorage" => DType::I32,
            "LongStorage" => DType::I64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
    /// The storage class torch pickles for this dtype.
    pub fn storage_class(self) -> &'static str {
        match self {
            DType::U8 => "ByteStorage",
            DType::I8 => "CharStorage",
            DType::I16 => "ShortStorage",
            DType::I32 => "IntStorage",
            DType::I64 => "LongStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::Bool => "BoolStorage",
        }
    }
    pub(crate) fn from_torch_name(name: &str) -> Option<Self> {
        Some(match name {
            "uint8" => DType::U8,
            "int8" => DType::I8,
            "int16" | "short" => DType::I16,
            "int32" | "int" => DType::I32,
            "int64" | "long" => DType::I64,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

/// Most dimensions a tensor may have (torch has no fixed limit; Templar's tensors have at most three).
pub const MAX_DIMS: usize = 16;

/// A tensor view over a storage record, validated so that every element it addresses lies inside the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Element type.
    pub dtype: DType,
    /// Storage record key.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    offset: u64,
    stride: Vec<u64>,
}

impl TensorMeta {
    /// Checks `(offset, shape, stride)` against a storage of `numel` elements (whose record already holds
    /// `numel * dtype.size()` bytes).
    pub(crate) fn new(
        dtype: DType,
        key: String,
        numel: u64,
        offset: u64,
        shape: Vec<u64>,
        stride: Vec<u64>,
    ) -> Result<Self, String> {
        if shape.len() != stride.len() {
            return Err(format!("{} sizes but {} strides", shape.len(), stride.len()));
        }
        if shape.len() > MAX_DIMS {
            return Err(format!("{} dimensions (at most {MAX_DIMS})", shape.len()));
        }
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or("element count overflows")?;
        if count > 0 {
            // Highest element addressed: offset + sum((size_i - 1) * stride_i).
            let last = shape
                .iter()
                .zip(&stride)
                .try_fold(offset, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
                .ok_or("index arithmetic overflows")?;
            if last >= numel {
                return Err(format!(
                    "view {shape:?} with strides {stride:?} at offset {offset} reaches element {last} of a storage of {numel}"
                ));
            }
        } else if offset > numel {
            return Err(format!("offset {offset} beyond a storage of {numel}"));
        }
        let shape = shape.into_iter().map(|d| d as usize).collect();
        Ok(Self {
            dtype,
            key,
            shape,
            offset,
            stride,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Byte size of the materialised tensor.
    pub fn nbytes(&self) -> u64 {
        self.numel() as u64 * self.dtype.size() as u64
    }

    /// The elements, row-major, as raw element bytes of `record` (the storage's bytes): borrowed when the tensor is
    /// contiguous (every tensor Templar writes), copied element by element otherwise.
    pub(crate) fn gather_bytes<'r>(&self, record: &'r [u8]) -> std::borrow::Cow<'r, [u8]> {
        let es = self.dtype.size();
        let n = self.numel();
        let contiguous = {
            let mut expect = 1u64;
            self.shape.iter().zip(&self.stride).rev().all(|(&d, &s)| {
                let ok = d == 1 || s == expect;
                expect *= d as u64;
                ok
            })
        };
        if contiguous {
            let start = self.offset as usize * es;
            return std::borrow::Cow::Borrowed(&record[start..start + n * es]);
        }
        let mut out = Vec::with_capacity(n * es);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let e = self.offset as usize
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(&i, &s)| i * s as usize)
                    .sum::<usize>();
            out.extend_from_slice(&record[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        std::borrow::Cow::Owned(out)
    }
}
