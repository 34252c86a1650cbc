# Prints where titan_sdk comes from on the worker.
import titan_sdk

print("titan_sdk from", titan_sdk.__file__)
