"""The flow: the bijection contract and the small bijections, the affine coupling layer and
its masks, the s/t ResNet, the multi-scale Real NVP model, its likelihood map, the folded
inference copy and the CUDA graphs that render it on a GPU."""
