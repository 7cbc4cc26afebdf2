use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ptero_core::{AlignedBuf, Element, ScalarType};

use crate::Error;

/// A tensor owned by the caller: contiguous (row-major) data of any dtype.
///
/// ```
/// use ptero_runtime::Tensor;
/// let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// assert_eq!(t.sizes(), &[2, 2]);
/// assert_eq!(t.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), ptero_runtime::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    dtype: ScalarType,
    sizes: Vec<usize>,
    data: AlignedBuf,
}

impl core::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype, self.sizes)
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.sizes == other.sizes && self.bytes() == other.bytes()
    }
}

fn numel_of(sizes: &[usize]) -> Result<usize, Error> {
    sizes
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument(format!("shape {sizes:?} has too many elements")))
}

impl Tensor {
    /// A tensor of `T` values with the given shape.
    pub fn from_slice<T: Element>(data: &[T], sizes: &[usize]) -> Result<Tensor, Error> {
        Tensor::from_bytes(T::DTYPE, sizes, bytemuck::cast_slice(data))
    }

    /// A bool tensor.
    pub fn from_bools(data: &[bool], sizes: &[usize]) -> Result<Tensor, Error> {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        Tensor::from_bytes(ScalarType::Bool, sizes, &bytes)
    }

    /// A tensor from raw little-endian bytes.
    pub fn from_bytes(dtype: ScalarType, sizes: &[usize], bytes: &[u8]) -> Result<Tensor, Error> {
        let n = numel_of(sizes)?;
        let want = n
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::InvalidArgument("tensor too large".into()))?;
        if bytes.len() != want {
            return Err(Error::InvalidArgument(format!(
                "a {dtype} tensor of shape {sizes:?} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        let mut data = AlignedBuf::try_zeroed(want).ok_or_else(|| {
            Error::InvalidArgument(format!("cannot allocate {want} bytes for a tensor"))
        })?;
        data.as_mut_slice().copy_from_slice(bytes);
        Ok(Tensor {
            dtype,
            sizes: sizes.to_vec(),
            data,
        })
    }

    /// A zero-filled tensor.
    pub fn zeros(dtype: ScalarType, sizes: &[usize]) -> Result<Tensor, Error> {
        let n = numel_of(sizes)?;
        let bytes = n
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::InvalidArgument("tensor too large".into()))?;
        let data = AlignedBuf::try_zeroed(bytes)
            .ok_or_else(|| Error::InvalidArgument(format!("cannot allocate {bytes} bytes")))?;
        Ok(Tensor {
            dtype,
            sizes: sizes.to_vec(),
            data,
        })
    }

    pub fn dtype(&self) -> ScalarType {
        self.dtype
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn numel(&self) -> usize {
        // Shapes are checked when a tensor is made; saturate rather than trust that.
        self.sizes.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Raw bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.as_mut_slice()
    }

    /// The elements as `T` (the dtype must match).
    pub fn as_slice<T: Element>(&self) -> Result<&[T], Error> {
        if self.dtype != T::DTYPE {
            return Err(Error::InvalidArgument(format!(
                "tensor is {}, not {}",
                self.dtype,
                T::DTYPE
            )));
        }
        bytemuck::try_cast_slice(self.bytes()).map_err(|e| Error::InvalidArgument(format!("{e:?}")))
    }

    /// A copy of the elements as `T` (the dtype must match).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, Error> {
        Ok(self.as_slice::<T>()?.to_vec())
    }
}

/// A value passed to or returned from a method.
#[derive(Debug, Clone, PartialEq)]
pub enum EValue {
    None,
    Int(i64),
    Double(f64),
    Bool(bool),
    String(String),
    Tensor(Tensor),
    IntList(Vec<i64>),
    DoubleList(Vec<f64>),
    BoolList(Vec<bool>),
    TensorList(Vec<Tensor>),
}

impl EValue {
    pub fn kind(&self) -> &'static str {
        match self {
            EValue::None => "None",
            EValue::Int(_) => "Int",
            EValue::Double(_) => "Double",
            EValue::Bool(_) => "Bool",
            EValue::String(_) => "String",
            EValue::Tensor(_) => "Tensor",
            EValue::IntList(_) => "IntList",
            EValue::DoubleList(_) => "DoubleList",
            EValue::BoolList(_) => "BoolList",
            EValue::TensorList(_) => "TensorList",
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            EValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            EValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

impl From<Tensor> for EValue {
    fn from(t: Tensor) -> Self {
        EValue::Tensor(t)
    }
}
