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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap();
        let t = Tensor::from_ndarray(&a).unwrap();
        assert_eq!(t.sizes(), &[2, 3]);
        assert_eq!(t.to_ndarray::<f32>().unwrap(), a);
        // Non-standard layouts are read in logical order.
        let tr = a.t().to_owned();
        let t = Tensor::from_ndarray(&tr).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), [1., 4., 2., 5., 3., 6.]);
        assert!(t.to_ndarray::<i64>().is_err());
    }
}
