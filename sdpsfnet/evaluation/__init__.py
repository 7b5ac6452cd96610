"""Evaluation: tiled inference and folder scoring (:mod:`.inference`), PSNR/SSIM (:mod:`.metrics`)
and figures of the learned PSFs (:mod:`.psf_figures`)."""
