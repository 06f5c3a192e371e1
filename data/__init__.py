"""Files that ship with lie_cam (installed as the package `lie_cam.data_files`): the embedded
compact VGG-16 (safetensors, its recipe and training log), the ImageNet-1k WordNet ids, and the
results that chapters load (detectors.json and zoo.json from `python -m lie_cam detect`).
Find them with `lie_cam.resources.data_file(name)`."""
