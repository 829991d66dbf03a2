"""Companion modules: the background ideas of the book's last four chapters, each backed by real code.

* :mod:`~wsbus.companion.autoencoder` - autoencoder / VAE pretraining on unlabeled images, fine-tuning on few
  labels (``book/10_autoencoder_pretraining.md``);
* :mod:`~wsbus.companion.classifier` and :mod:`~wsbus.companion.metrics` - a CNN diagnosis classifier and its
  sensitivity, specificity, ROC / AUC and confusion matrix (``book/11_cnn_diagnosis.md``);
* :mod:`~wsbus.companion.metric_learning` - Siamese / triplet embeddings of mass crops and similar-case retrieval
  (``book/12_metric_learning.md``);
* :mod:`~wsbus.companion.transfer` - frozen features + linear heads vs fine-tuning, and domain shift between
  scanners or data sets (``book/13_transfer_domain_shift.md``);
* :mod:`~wsbus.companion.crops` - from :class:`~wsbus.data.Sample` records to image / crop tensors and splits;
* :mod:`~wsbus.companion.figures` - the chapters' matplotlib figures.
"""
from .autoencoder import (BudgetStudy, ConvAutoencoder, ConvVAE, ELBOTerms, EncoderBackbone, classifier_from_encoder, elbo,
                          gaussian_kl, label_budget_study, pretrain_autoencoder, reparameterize)
from .classifier import (BACKBONES, DiagnosisClassifier, TinyBackbone, TinyTrunk, batch_indices, build_classifier,
                         default_augmentation, extract_features, predict_scores, train_classifier)
from .crops import (CropSet, image_tensor, images_to_tensor, labels_tensor, load_samples, mass_crops, random_crops,
                    region_crops, stratified_split, stratified_subset)
from .metric_learning import (EmbeddingNet, all_pairs, batch_all_triplets, batch_hard_triplets, contrastive_loss,
                              mine_pairs, mine_triplets, precision_at_k, retrieve, train_embedding, triplet_loss)
from .metrics import (BinaryMetrics, ClassificationMetrics, binary_auc, binary_metrics, binary_roc_curve,
                      classification_metrics)
from .transfer import (Domain, DomainMatrix, LinearHead, TransferStudy, cross_domain_matrix, domain_from_samples,
                       fit_linear_head, mmd2, transfer_study)

__all__ = [
    # autoencoder
    "ConvAutoencoder", "ConvVAE", "ELBOTerms", "elbo", "gaussian_kl", "reparameterize", "pretrain_autoencoder",
    "EncoderBackbone", "classifier_from_encoder", "label_budget_study", "BudgetStudy",
    # classifier
    "BACKBONES", "TinyTrunk", "TinyBackbone", "DiagnosisClassifier", "build_classifier", "default_augmentation",
    "train_classifier", "predict_scores", "extract_features", "batch_indices",
    # data
    "CropSet", "image_tensor", "images_to_tensor", "labels_tensor", "mass_crops", "region_crops", "random_crops",
    "stratified_subset",
    "stratified_split", "load_samples",
    # metric learning
    "EmbeddingNet", "contrastive_loss", "triplet_loss", "all_pairs", "mine_pairs", "mine_triplets",
    "batch_all_triplets", "batch_hard_triplets", "train_embedding", "retrieve", "precision_at_k",
    # metrics
    "BinaryMetrics", "ClassificationMetrics", "binary_roc_curve", "binary_auc", "binary_metrics",
    "classification_metrics",
    # transfer
    "LinearHead", "fit_linear_head", "Domain", "domain_from_samples", "DomainMatrix", "cross_domain_matrix", "TransferStudy",
    "transfer_study", "mmd2",
]
