#!/usr/bin/env bash
# emcryo under SLURM with OpenMPI: ranks x threads (x GPUs). Submit with sbatch, after choosing
# one of the layouts below (the #SBATCH lines of the others stay commented: "##SBATCH").
#
# One node, 16 cores: 4 ranks x 4 threads.
#SBATCH --job-name=emcryo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#
# Several nodes (here 4 x 32 cores): 8 ranks per node x 4 threads = 32 ranks.
##SBATCH --nodes=4
##SBATCH --ntasks-per-node=8
##SBATCH --cpus-per-task=4
#
# GPUs (with the CUDA backend): one rank per GPU, each rank sees its own (SLURM
# sets CUDA_VISIBLE_DEVICES per task with --gpus-per-task; where a rank sees all of a node's GPUs,
# each rank takes GPU local rank % count unless --gpu says otherwise), and the node's cores are shared by its
# ranks. E.g. 2 nodes x 4 GPUs x 8 threads:
##SBATCH --nodes=2
##SBATCH --ntasks-per-node=4
##SBATCH --gpus-per-task=1
##SBATCH --cpus-per-task=8
#
# Results do not depend on the layout: the same data give the same maps and poses with any
# number of ranks and threads (docs/design.md, "MPI"). The job folder must be on a file system
# every node sees; rank 0 alone writes it. Resume a stopped job with the same script and
# `--continue OUT` in place of the job's options (any rank count).
set -euo pipefail

EMCRYO=${EMCRYO:-emcryo}
JOB=${JOB:-refine}
ARGS=${ARGS:---particles particles.star --ref start.mrc --out Refine/job001}

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# srun starts the ranks through PMIx when SLURM was built with it (`srun --mpi=list`); otherwise
# use mpirun, which reads the allocation from SLURM itself:
#   mpirun --map-by "slot:PE=$OMP_NUM_THREADS" --bind-to core "$EMCRYO" -j "$OMP_NUM_THREADS" $JOB $ARGS
# shellcheck disable=SC2086
srun --mpi=pmix --cpu-bind=cores "$EMCRYO" -j "$OMP_NUM_THREADS" "$JOB" $ARGS
