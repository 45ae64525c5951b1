"""The engine: the compiled C core (`native`), the model handle over it (`engine`), and the readable numpy
forward pass (`reference`) the C engine is tested against."""
