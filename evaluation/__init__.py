"""Scoring dubbed videos: lip sync (LSE-D / LSE-C), reconstruction (PSNR, SSIM, LPIPS) and FID."""
