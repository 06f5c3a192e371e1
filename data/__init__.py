"""Files that ship with lie_cam (installed as the package `lie_cam.data_files`): the embedded
compact VGG-16 (safetensors, its recipe and training log) and the ImageNet-1k WordNet ids.
Find them with `lie_cam.resources.data_file(name)`."""
