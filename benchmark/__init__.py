"""Speed, measured: training and dubbing throughput per stage and precision, with FLOPs and FLOP/s.

    python bench.py                         # every task but generator: fp32, and bf16 where native
    python bench.py --tasks generator --device cuda --precision bf16 --peak_tflops bf16=989
    python bench.py --json bench.json       # also the rows as a JSON list

Tasks:
  generator    generator forward only, frames per second at mouth 64/128/256, on the copy optimize_for_inference
               makes of it (channels_last): the whole network, and as dubbing runs it (+ref1x: the references
               encoded once); batch 1 on a CPU, --generator_batch on a GPU
  train_frame  one frame-stage iteration (G, D, VGG19 perception; synthetic batch, so the data loader is not
               counted) at the lab's batch sizes: 64/bs24, 128/bs12, 256/bs4
  train_clip   one clip-stage iteration (synthetic batch) at the lab's 256/bs3
  baseline     DINet's published training iteration (benchmark/published/) at the rows of train_frame and
               train_clip, fp32 only: what their speed-ups are over
  inference    the whole dubbing pipeline (decode, crops, features, generator, blend, encode; landmarks given)
               on a --video WxH video (default 1080x1920, the published figure's: the sample clip of
               ../shared/data when present, else the demo face placed on such a frame), frames per second,
               end_to_end = true, the seconds of each stage, and for bf16 the PSNR of the output against the fp32
               output (whole frames, and the face boxes alone); first, DINet's published inference loop on the
               same video and machine (benchmark/published/, a row with baseline = true), and each row's
               speed-up over it (--published_loop off skips it); --inference_repeats N runs each N times, the
               published loop and ours in turn, and gives the median runs (the lower middle one of an even
               count)
  loader       the frame stage's data loader at mouth 64, batch 24 (workers, seeded sampler, crop cache) on
               demo data, samples per second: the training step's rate must stay below it
GFLOPs are counted with torch.utils.flop_counter on the plain model (a multiply-add is 2 FLOPs; lab1 at mouth 64
is DINet's 22.4 per frame); a training row counts this repository's iteration, the baseline's too (which computes
more).
Model-FLOP utilisation (MFU) = achieved / peak, with --peak_tflops or on a GPU named in GPU_PEAKS. Each training
row runs in a process of its own and reports its peak memory (GB: resident set on a CPU, allocated on a GPU); one
that runs out of memory is reported as failed and the others are still measured (--train_batch: a smaller batch).

The package: measure.py (timing, FLOPs, memory), generator.py, training.py, dubbing.py (with processes.py: a
dubbing run in a process of its own), loader.py, cli.py (the flags and the table); published/ holds DINet's
published code that the baseline rows run.
"""
