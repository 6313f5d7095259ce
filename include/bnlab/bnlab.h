/* bnlab: BatchNorm with an explicit batch. Umbrella header. */
#ifndef BNLAB_H
#define BNLAB_H
#include "bnlab/core.h"
#include "bnlab/bn.h"
#include "bnlab/nn.h"
#include "bnlab/family.h"
#include "bnlab/layer.h"
#include "bnlab/train.h"
#include "bnlab/dist.h"
#include "bnlab/data.h"
#include "bnlab/onnx.h"
#include "bnlab/images.h"
#endif
