"""Images per second of VGG16 features up to conv5_3: jaxmouse against PyTorch, side by side.

    python experiments/bench_features.py                  # 64x64 and 128x128 (~1 minute on 2 CPUs)
    python experiments/bench_features.py --sizes 36x64,64x64,128x128 --batch-size 32 --repeats 5

The same as `jaxmouse bench features`; the logic lives in jaxmouse/benchmarks/features.py.
"""

from jaxmouse.benchmarks.features import main

if __name__ == "__main__":
  main()
