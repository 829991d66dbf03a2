"""Label-free pretraining of the detector's backbone on the training images themselves (no hub, no ImageNet).

ImageNet weights cannot be downloaded everywhere (not here, not at many hospitals), and a backbone trained from
scratch on a few hundred boxed scans starts from nothing. :func:`pretrain_backbone` trains the backbone of
:func:`wsbus.models.build_detector` (``"tiny"``, and the same code for ``"vgg16"``, ``"resnet18"``,
``"resnet50"``) on unlabelled images at the detector's input scale, with one of :data:`METHODS`:

``"simclr"``       two augmented views, pooled features, an MLP projection, NT-Xent (:func:`nt_xent`)
``"byol"``         two views, online projection + prediction against an EMA target (:func:`byol_loss`)
``"mae"``          masked-image modelling for a CNN (SimMIM form): masked patches, a 1x1-conv + pixel-shuffle
                   decoder, L1 on the masked pixels
``"autoencoder"``  chapter 10's autoencoder through the backbone: a narrow code, transposed convolutions, MSE

Only ``Sample.image`` is read (never labels or boxes); the file written records how many images and which ids
were used, so a caller can show that no test image was seen. The heads are dropped: the file holds the backbone's
state dict, which :func:`init_backbone` loads into a detector's ``model.backbone``.

Example::

    from wsbus.pretrain import pretrain_backbone, init_backbone
    result = pretrain_backbone(train_samples, "runs/fold1/simclr.pt", method="simclr", size=160, steps=1500)
    model = build_detector("tiny", min_size=160, max_size=320)
    init_backbone(model, result.path)

Command line: ``wsbus pretrain --data SOURCE --out FILE [--method ...] [--exclude IDS_FILE]``.

Taught in ``book/10_autoencoder_pretraining.md``.
"""
from .config import DEFAULT_VIEWS, METHODS, PretrainConfig
from .files import (BACKBONE_FILE_KIND, STATE_FILE_KIND, exclude_images, image_record, init_backbone, load_backbone,
                    load_pretrained, load_resume_state, read_ids, resume_path)
from .objectives import (BYOL, OBJECTIVES, Autoencoder, MaskedReconstruction, Objective, SimCLR, build_objective,
                         byol_loss, nt_xent, patch_mask)
from .probe import knn_accuracy, linear_probe_accuracy, pooled_features
from .run import PretrainResult, build_pretrain_backbone, pretrain_backbone
from .views import (VIEWS, StepViews, ViewAugmentation, batch_indices, make_views, prepare_images,
                    resize_like_detector, view_batches)

__all__ = ["METHODS", "DEFAULT_VIEWS", "PretrainConfig", "PretrainResult", "pretrain_backbone", "load_backbone",
           "init_backbone", "load_pretrained", "load_resume_state", "resume_path", "image_record", "read_ids",
           "exclude_images", "BACKBONE_FILE_KIND", "STATE_FILE_KIND", "build_pretrain_backbone", "nt_xent", "byol_loss",
           "patch_mask", "Objective", "SimCLR", "BYOL", "MaskedReconstruction", "Autoencoder", "OBJECTIVES",
           "build_objective", "VIEWS", "ViewAugmentation", "resize_like_detector", "prepare_images", "make_views",
           "batch_indices", "StepViews", "view_batches", "pooled_features", "knn_accuracy", "linear_probe_accuracy"]
