"""Machine vision with neural data: classifiers, distortions, attacks, similarity, distillation.

Arrays and tensors in, arrays and tensors out; no database. The modules, one job each:

- ``stimuli``: stimulus sets (scikit-learn's bundled digits fitted to a model's input size);
- ``data``: the classification dataset builder (train / validation / test split by seed);
- ``models``: classifier builders (a small CNN with an optional response head, an MLP);
- ``distortions``: Gaussian noise, blur, contrast, salt-and-pepper; out-of-domain transforms;
- ``attacks``: projected gradient descent (L-inf);
- ``similarity``: representational similarity matrices and the Li et al. 2019 regularizer;
- ``augment``: the learned spatial-transform augmentor of HARD distillation;
- ``neural``: predicted responses of a model of visual cortex to a stimulus set;
- ``training``: the trainers (plain, similarity-regularized, co-trained, distillation);
- ``robustness``: accuracy clean, per distortion and under attack.
"""
