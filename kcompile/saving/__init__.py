"""`kcompile.saving` (Keras 3's `keras.saving`): `.keras` archives and `.weights.h5` files in Keras's
own format, read and written with h5py alone, plus the registry of custom classes."""

from kcompile.saving.object_registration import (
    CustomObjectScope,
    custom_object_scope,
    get_custom_objects,
    get_registered_name,
    get_registered_object,
    register_keras_serializable,
)
from kcompile.saving.saving_lib import load_model, load_weights, save_model, save_weights

__all__ = ["CustomObjectScope", "custom_object_scope", "get_custom_objects", "get_registered_name",
           "get_registered_object", "load_model", "load_weights", "register_keras_serializable",
           "save_model", "save_weights"]
