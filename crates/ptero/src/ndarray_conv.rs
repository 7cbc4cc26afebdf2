//! Conversions between [`Tensor`] and `ndarray` arrays (feature `ndarray`).

use ndarray::{ArrayD, IxDyn};
use ptero_core::Element;
use ptero_runtime::{Error, Tensor};

/// Conversions to and from `ndarray`.
pub trait NdarrayExt: Sized {
    fn from_ndarray<T: Element>(a: &ArrayD<T>) -> Result<Self, Error>;
    fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>, Error>;
}

impl NdarrayExt for Tensor {
    fn from_ndarray<T: Element>(a: &ArrayD<T>) -> Result<Tensor, Error> {
        let data: Vec<T> = a.iter().copied().collect();
        Tensor::from_slice(&data, a.shape())
    }

    fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>, Error> {
        ArrayD::from_shape_vec(IxDyn(self.sizes()), self.to_vec::<T>()?)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }
}
