/* Internal helpers shared by the layer files: the public layer API (bnlab/layer.h). */
#ifndef BNLAB_NN_NET_H
#define BNLAB_NN_NET_H

#include "bnlab/layer.h"

#endif
